"""Console-script entry point: gevent's monkey-patching must happen before anything else."""


def main():
    from gevent import monkey

    monkey.patch_all()
    from .cli import main as cli_main

    return cli_main()
