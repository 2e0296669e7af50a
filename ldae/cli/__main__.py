"""``python -m ldae.cli``: the same program as the ``ldae`` command."""
import sys

from ldae.cli.command import main

sys.exit(main())
