"""``python -m node`` runs the ``cpn`` command line (same as the console script)."""

import sys

from node.cli import main

sys.exit(main())
