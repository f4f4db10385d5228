"""The `aperio` command line (DESIGN §10): argument parsing and output only; the work is library code."""

from aperio_assets.cli.app import main

__all__ = ["main"]
