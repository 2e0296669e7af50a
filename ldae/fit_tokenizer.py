"""``python -m ldae.fit_tokenizer`` (also under torchrun): the same program as ``ldae fit-tokenizer``."""
import sys

from ldae.cli.command import run

if __name__ == "__main__":
    sys.exit(run("fit-tokenizer", sys.argv[1:]))
