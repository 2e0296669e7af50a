"""``python -m ldae.pretrain`` (also under torchrun): the same program as ``ldae pretrain``."""
import sys

from ldae.cli.command import run

if __name__ == "__main__":
    sys.exit(run("pretrain", sys.argv[1:]))
