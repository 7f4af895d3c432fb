"""`python -m geoface …`: the `geoface` command (geoface/cli), for an environment whose scripts folder is not on PATH."""
import sys

from geoface.cli import main

sys.exit(main())
