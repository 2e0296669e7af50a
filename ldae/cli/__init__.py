"""The `ldae` command: argparse parsers, flag checks and one-line user errors; the only layer that knows the flags."""

from ldae.cli.command import main  # noqa: F401  (the console script ldae = ldae.cli:main)
