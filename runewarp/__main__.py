"""`python -m runewarp`: the console script's entry point (monkey-patching first)."""

from runewarp.entry import main

raise SystemExit(main())
