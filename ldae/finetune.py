"""``python -m ldae.finetune`` (also under torchrun): the same program as ``ldae finetune``."""
import sys

from ldae.cli.command import run

if __name__ == "__main__":
    sys.exit(run("finetune", sys.argv[1:]))
