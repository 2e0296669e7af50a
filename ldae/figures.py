"""``python -m ldae.figures`` (also under torchrun): the same program as ``ldae figures``."""
import sys

from ldae.cli.command import run

if __name__ == "__main__":
    sys.exit(run("figures", sys.argv[1:]))
