"""`python -m runewarp`: monkey-patch first, then hand over to the CLI."""

from gevent import monkey

monkey.patch_all()

from runewarp.cli import main  # noqa: E402

raise SystemExit(main())
