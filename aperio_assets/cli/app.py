"""Argument parsing, dispatch, and turning errors into one clear line and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from aperio_assets.cli import bench, catalog, demo, maintenance, migrate, refresh, status
from aperio_assets.cli.redact import install_redaction
from aperio_assets.errors import AperioError

COMMANDS = (status, refresh, migrate, catalog, maintenance, demo, bench)
log = logging.getLogger("aperio")


NOISY_LOGGERS = ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3")


class _OneLineFormatter(logging.Formatter):
    """``aperio: LEVEL: message``; with ``--debug`` followed by the traceback, if the record has one
    (already redacted by :class:`RedactCredentials`)."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        line = f"aperio: {record.levelname.lower()}: {record.getMessage()}"
        if self.debug and record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        return f"{line}\n{record.exc_text}" if self.debug and record.exc_text else line


def build_parser() -> argparse.ArgumentParser:
    # Options every command accepts, before or after the command name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="aperio.yaml to use (default: $APERIO_CONFIG, else ./aperio.yaml)",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and debug logging"
    )
    parser = argparse.ArgumentParser(
        prog="aperio", parents=[common], description="Shared, lock-free metadata for a file lake."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(commands, common)
    return parser


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(debug))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    # Set both ways: a run in the same process (tests, embedding) may have quietened them before.
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.NOTSET if debug else logging.ERROR)
    install_redaction()  # a handler filter sees every record that handler emits, whichever logger made it


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
