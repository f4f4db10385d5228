"""Argument parsing, dispatch, and turning errors into one clear line and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aperio_assets.cli import bench, catalog, demo, maintenance, migrate, refresh, status
from aperio_assets.cli.redact import RedactCredentials
from aperio_assets.errors import AperioError

COMMANDS = (status, refresh, migrate, catalog, maintenance, demo, bench)
log = logging.getLogger("aperio")


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"aperio: {record.levelname.lower()}: {record.getMessage()}"


def build_parser() -> argparse.ArgumentParser:
    # Options every command accepts, before or after the command name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="aperio.yaml to use (default: $APERIO_CONFIG, else ./aperio.yaml)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logging")
    parser = argparse.ArgumentParser(prog="aperio", parents=[common],
                                     description="Shared, lock-free metadata for a file lake.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(commands, common)
    return parser


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    handler.addFilter(RedactCredentials())  # a handler filter sees every record, whichever logger made it
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name, default in (("config", None), ("json", False), ("debug", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    args.parser = parser
    _configure_logging(args.debug)
    try:
        return args.handler(args)
    except AperioError as exc:
        if args.debug:
            log.exception("failed")
        print(f"aperio: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("aperio: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if args.debug:
            log.exception("failed")
        print(f"aperio: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
