"""python -m bemi_pg.cli: the bemi-pg command line."""

import sys

from bemi_pg.cli import main

sys.exit(main())
