"""``python -m aperio_assets`` is the `aperio` command."""

import sys

from aperio_assets.cli import main

sys.exit(main())
