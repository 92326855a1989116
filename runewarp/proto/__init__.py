"""Sans-I/O core: parsers, codecs and state machines fed with bytes and `now`.

Nothing in this package may import socket, ssl, gevent, select or time
(tests/proto/test_no_io.py enforces it)."""
