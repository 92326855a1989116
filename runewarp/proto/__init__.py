"""Sans-I/O core: parsers, codecs and state machines fed with bytes and `now`.

Nothing in this package may import socket, ssl, gevent, select or time
(tests/test_layering.py enforces it)."""
