"""Console-script entry point: gevent's monkey-patching must happen before anything else."""


def main():
    _patch_all()
    from .cli import main as cli_main

    return cli_main()


def _patch_all():
    """gevent's patch_all, with one scan of the installed distributions' entry points.

    gevent looks up plugins for each of its ~25 patch events, and each lookup reads the
    metadata of every installed distribution: 0.4 s of CPU on every start (a CLI call, a
    cron renewal, a worker).  The distributions do not change while patching, so the
    events are given one scan's answer (the same plugins)."""
    from importlib import metadata

    from gevent import monkey

    scan = metadata.entry_points
    found = scan()
    metadata.entry_points = lambda **params: found.select(**params) if params else found
    try:
        monkey.patch_all()
    finally:
        metadata.entry_points = scan
