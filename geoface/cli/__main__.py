"""`python -m geoface.cli` = the `geoface` command."""
import sys

from geoface.cli import main

sys.exit(main())
