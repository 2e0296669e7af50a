"""``python -m ldae.fit_pca`` (also under torchrun): the same program as ``ldae fit-pca``."""
import sys

from ldae.cli.command import run

if __name__ == "__main__":
    sys.exit(run("fit-pca", sys.argv[1:]))
