"""``python -m diffmamba.cli``: the ``diffmamba`` command."""
import sys

from diffmamba.cli import main

sys.exit(main())
