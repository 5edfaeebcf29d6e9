"""`python -m vidiff` runs the command line."""

import sys

from vidiff.app.cli import main

sys.exit(main())
