"""`python -m mesh_ctl`: the `meshctl` command."""

import sys

from mesh_ctl.cli import main

sys.exit(main(sys.argv[1:]))
