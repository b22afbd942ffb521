"""``python -m tunebook``: the same command line as ``tunebook``."""

import sys

from tunebook.cli import main

sys.exit(main())
