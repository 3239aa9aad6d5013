"""``python -m paragrad`` runs the command line."""

import sys

from paragrad.cli import main

sys.exit(main())
