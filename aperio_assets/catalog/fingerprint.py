"""What identifies a catalog (DESIGN §7): the schemas and view definitions a cache file was bound
from, each view's own digest (so a new version of the definitions can tell which views changed),
and which lake's definitions they are (so its last cache file can be the base of the next one)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from aperio_assets.catalog.views import ViewDefinition

# How the state views are made (constant views over per-connection snapshots); another way of making
# them needs other cache files.
STATE_FORMAT = "snapshots"


def _digest(value: object, length: int = 32) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:length]


def view_key(view: ViewDefinition) -> str:
    """How a view is named in reports and cache manifests: ``schema.view``."""
    return f"{view.schema_name}.{view.view_name}"


def definition_digest(view: ViewDefinition) -> str:
    """Changes exactly when something its binding depends on changes: name, SQL, origin, columns."""
    return _digest([view.schema_name, view.view_name, view.sql, view.origin, [list(c) for c in view.columns]])


def compatibility() -> str:
    """What a cache file must share with this process to be opened or copied: the DuckDB version
    (its storage format) and how the state views are made."""
    return _digest({"duckdb": duckdb.__version__, "state": STATE_FORMAT}, 16)


def catalog_fingerprint(schemas: Sequence[str], digests: Sequence[str]) -> str:
    """One cache file per version of everything the views' binding depends on: the schemas, every
    definition (by digest, in order) and :func:`compatibility`."""
    return _digest({"compatibility": compatibility(), "schemas": list(schemas), "views": list(digests)})


def lake_key(endpoint: str, views_directory: str) -> str:
    """Which lake's definitions these are: where its ``catalog/views`` table lives (on S3, with the
    endpoint: two servers may hold the same bucket name)."""
    return _digest([endpoint, views_directory.rstrip("/")])


@dataclass(frozen=True)
class Selection:
    """The definitions of the configured schemas, their digests and fingerprint, and the keys of the
    definitions whose schema is not configured."""

    views: list[ViewDefinition]
    digests: list[str]
    fingerprint: str
    unconfigured: list[str]


class Definitions:
    """The view definitions of one version of the views table, sorted, with their digests."""

    def __init__(self, views: list[ViewDefinition]) -> None:
        self.views = sorted(views, key=lambda v: (v.schema_name, v.view_name))
        self.digests = [definition_digest(v) for v in self.views]
        self._selections: dict[tuple[str, ...], Selection] = {}

    def select(self, schemas: Sequence[str]) -> Selection:
        """The definitions of ``schemas`` (sorted names), worked out once per set of schemas."""
        key = tuple(schemas)
        selection = self._selections.get(key)
        if selection is None:
            pairs = [(v, d) for v, d in zip(self.views, self.digests, strict=True) if v.schema_name in key]
            digests = [d for _, d in pairs]
            selection = self._selections[key] = Selection(
                [v for v, _ in pairs],
                digests,
                catalog_fingerprint(key, digests),
                [view_key(v) for v in self.views if v.schema_name not in key],
            )
        return selection
