"""Timbre web studio: ``python app.py --help`` for the flags; the studio itself lives in :mod:`ui`."""

import sys

from ui.server import main

if __name__ == "__main__":
    sys.exit(main())
