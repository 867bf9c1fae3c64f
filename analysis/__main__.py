"""`python -m analysis SWEEP_DIR [--spec NAME|PATH] [--format md|tex|csv] [--out DIR]`."""

import sys

from analysis.cli import main

sys.exit(main())
