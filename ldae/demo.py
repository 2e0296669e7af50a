"""``python -m ldae.demo`` (also under torchrun): the same program as ``ldae demo``."""
import sys

from ldae.cli.command import run

if __name__ == "__main__":
    sys.exit(run("demo", sys.argv[1:]))
