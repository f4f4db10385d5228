"""Quoting for generated SQL: every identifier and literal aperio writes goes through these."""

from __future__ import annotations


def quote_identifier(name: str) -> str:
    """``x"y`` → ``"x""y"``: any name, however hostile, is one inert identifier."""
    if "\x00" in name:
        raise ValueError("identifiers may not contain NUL characters")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``it's`` → ``'it''s'``."""
    if "\x00" in value:
        raise ValueError("string literals may not contain NUL characters")
    return "'" + value.replace("'", "''") + "'"
