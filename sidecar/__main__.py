"""`python -m sidecar`: the same entry point as `meshctl`."""

import sys

from mesh_ctl.cli import main

sys.exit(main(sys.argv[1:]))
