"""Thin shim: ``python cli.py ...`` is ``md2bench ...``. The app lives in ``md2bench/cli.py``."""

from md2bench.cli import app

if __name__ == "__main__":
    app()
