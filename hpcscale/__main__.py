"""`python -m hpcscale`: the same command as the installed `hpcscale` script."""

import sys

from hpcscale.cli.main import main

sys.exit(main())
