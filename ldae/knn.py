"""``python -m ldae.knn`` (also under torchrun): the same program as ``ldae knn``."""
import sys

from ldae.cli.command import run

if __name__ == "__main__":
    sys.exit(run("knn", sys.argv[1:]))
