#!/usr/bin/env python3
"""Download and verify the model file of each role (see modelplane/fetch.py); --help for the options."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelplane.fetch import main

if __name__ == "__main__":
    raise SystemExit(main())
