import sys

from hpcscale.cli import main

sys.exit(main())
