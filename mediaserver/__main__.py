"""`python -m mediaserver` runs the CLI."""

import sys

from mediaserver.cli import main

sys.exit(main())
