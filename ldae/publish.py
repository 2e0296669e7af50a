"""``python -m ldae.publish`` (also under torchrun): the same program as ``ldae export``."""
import sys

from ldae.cli.command import run

if __name__ == "__main__":
    sys.exit(run("export", sys.argv[1:]))
