"""``python -m ldae.probe`` (also under torchrun): the same program as ``ldae probe``."""
import sys

from ldae.cli.command import run

if __name__ == "__main__":
    sys.exit(run("probe", sys.argv[1:]))
