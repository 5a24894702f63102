import sys

from hpcscale.cli.main import main

sys.exit(main())
