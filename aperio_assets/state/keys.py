"""Batch keys: flat ``str → str`` maps, serialised canonically everywhere (DESIGN §4)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

BatchKey = Mapping[str, Any] | str
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_key(key_values: BatchKey) -> str:
    """Sorted keys, compact separators, non-ASCII kept: ``{"month":"01","year":"2013"}``.

    Accepts a mapping or its JSON text (in any key order). Numbers are taken as their text; nested
    or null values are not batch keys and raise ValueError.
    """
    if type(key_values) is dict and all(type(k) is str and type(v) is str for k, v in key_values.items()):
        return _ENCODER.encode(key_values)  # the common case, on hot paths: already flat strings
    if isinstance(key_values, str):
        try:
            key_values = json.loads(key_values)
        except json.JSONDecodeError as exc:
            raise ValueError(f"batch key {key_values!r} is not JSON: {exc.msg}") from None
    if not isinstance(key_values, Mapping):
        raise ValueError(f"a batch key is a mapping of strings, got {key_values!r}")
    flat: dict[str, str] = {}
    for name, value in key_values.items():
        if not isinstance(name, str):
            raise ValueError(f"batch key names must be strings, got {name!r}")
        if isinstance(value, bool) or value is None or isinstance(value, dict | list | tuple):
            raise ValueError(f"batch key {name!r} must have a string value, got {value!r}")
        flat[name] = value if isinstance(value, str) else str(value)
    return _ENCODER.encode(flat)


def parse_key(text: str) -> dict[str, str]:
    return json.loads(text)
