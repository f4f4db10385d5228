"""Loading and validating ``aperio.yaml`` (DESIGN §2).

Every setting has a working default; every invalid value raises :class:`ConfigError` whose message
names the file and the key. Credentials are never read from the file: they come from the standard
AWS environment variables and profile chain only.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from aperio_assets.errors import ConfigError

log = logging.getLogger(__name__)

CONFIG_ENV = "APERIO_CONFIG"
DEFAULT_CONFIG_NAME = "aperio.yaml"
StateStorage = Literal["shared", "local"]
STATE_STORAGE_MODES: tuple[str, ...] = ("shared", "local")

# A schema becomes a DuckDB schema and a folder under .aperio/: plain identifiers only, and none of
# the names aperio itself uses there or that DuckDB reserves.
SAFE_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
RESERVED_SCHEMA_NAMES = frozenset(
    {"aperio", "catalog", "main", "temp", "system", "information_schema", "pg_catalog", "memory"}
)
CREDENTIAL_KEYS = frozenset(
    {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "key",
        "secret",
        "token",
        "access_key_id",
        "secret_access_key",
        "session_token",
        "password",
    }
)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_DURATION_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3: endpoint and region only (credentials come from the AWS chain)."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    max_attempts: int = 6  # tries per request, transient errors only (DESIGN §3)

    @property
    def use_ssl(self) -> bool:
        return not (self.endpoint_url or "").startswith("http://")


@dataclass(frozen=True)
class CompactionSettings:
    max_small_files: int = 64
    tombstone_retention_seconds: int = 7 * 86400
    # how long compacted-away files stay readable before they are deleted (DESIGN §5)
    grace_period_seconds: int = 3600


@dataclass(frozen=True)
class SchemaConfig:
    name: str
    directory: str  # absolute local path or s3:// URL
    state_storage: StateStorage

    @property
    def shared(self) -> bool:
        """Whether the schema's state is shared (the DESIGN §5 protocol) or local (the legacy
        stores): the one place that decides (``state.access.is_shared`` asks it)."""
        return self.state_storage == "shared"


@dataclass(frozen=True)
class AperioConfig:
    source: str  # the config file, for messages
    base_directory: str
    aperio_directory: str
    state_storage: StateStorage
    legacy_directory: str | None = None
    s3: S3Settings = field(default_factory=S3Settings)
    compaction: CompactionSettings = field(default_factory=CompactionSettings)
    configured_schemas: tuple[SchemaConfig, ...] | None = None

    @property
    def is_s3(self) -> bool:
        return is_s3_url(self.base_directory)


def is_s3_url(location: str) -> bool:
    return location.startswith(("s3://", "s3a://"))


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--config``, else ``$APERIO_CONFIG``, else ``./aperio.yaml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    return Path(DEFAULT_CONFIG_NAME)


def load_config(path: str | os.PathLike[str] | None = None) -> AperioConfig:
    """Read and validate the configuration; see :func:`find_config_path` for where it is looked up."""
    config_path = find_config_path(path)
    source = str(config_path)
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, None, "configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, None, f"cannot read configuration file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(source, None, f"not valid YAML{where}: {problem}") from None
    return parse_config(raw if raw is not None else {}, source=source, relative_to=config_path.resolve().parent)


def parse_config(raw: Any, *, source: str, relative_to: Path) -> AperioConfig:
    """Validate an already-parsed YAML document (``relative_to`` resolves relative directories)."""
    if not isinstance(raw, dict):
        raise ConfigError(source, None, "the top level must be a mapping of settings")
    _reject_unknown(
        raw,
        {"baseDirectory", "aperioDirectory", "stateStorage", "legacyDirectory", "storage", "compaction", "schemas"},
        source,
        "",
    )

    base_raw = raw.get("baseDirectory", ".")
    base = _location(base_raw, "baseDirectory", source, relative_to)
    aperio_raw = raw.get("aperioDirectory")
    aperio = (
        _location(aperio_raw, "aperioDirectory", source, relative_to)
        if aperio_raw is not None
        else join_location(base, ".aperio")
    )
    legacy_raw = raw.get("legacyDirectory")
    legacy = _location(legacy_raw, "legacyDirectory", source, relative_to) if legacy_raw is not None else None
    mode = _state_storage(raw.get("stateStorage", "shared"), "stateStorage", source)

    config = AperioConfig(
        source=source,
        base_directory=base,
        aperio_directory=aperio,
        state_storage=mode,
        legacy_directory=legacy,
        s3=_s3_settings(raw.get("storage"), source),
        compaction=_compaction(raw.get("compaction"), source),
    )
    if "schemas" in raw and raw["schemas"] is not None:
        config = replace(config, configured_schemas=_schemas(raw["schemas"], config, source))
    _warn_unshareable(config)
    return config


def _warn_unshareable(config: AperioConfig) -> None:
    if not config.is_s3:
        return
    modes = {s.state_storage for s in config.configured_schemas or ()} | {config.state_storage}
    if "local" in modes:
        log.warning(
            "%s: stateStorage: local state cannot be shared between machines; with an S3 "
            "baseDirectory use stateStorage: shared",
            config.source,
        )


def _reject_unknown(mapping: dict[str, Any], allowed: set[str], source: str, prefix: str) -> None:
    for key in mapping:
        if key not in allowed:
            name = f"{prefix}{key}"
            if str(key).lower() in CREDENTIAL_KEYS:
                raise ConfigError(
                    source,
                    name,
                    "credentials are never read from the configuration "
                    "file; use the standard AWS environment variables or profile",
                )
            raise ConfigError(source, name, f"unknown setting (expected one of: {', '.join(sorted(allowed))})")


def _string(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(source, key, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _location(value: Any, key: str, source: str, relative_to: Path) -> str:
    text = _string(value, key, source)
    if "://" in text:
        if not is_s3_url(text):
            raise ConfigError(source, key, f"unsupported location {text!r} (use a local path or s3://bucket/prefix)")
        bucket = text.split("://", 1)[1].split("/", 1)[0]
        if not bucket:
            raise ConfigError(source, key, f"{text!r} names no bucket")
        return "s3://" + text.split("://", 1)[1].rstrip("/")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = relative_to / path
    return os.path.normpath(str(path))


def join_location(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URL."""
    if is_s3_url(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return os.path.join(base, *parts)


def _state_storage(value: Any, key: str, source: str) -> StateStorage:
    if value not in STATE_STORAGE_MODES:
        raise ConfigError(source, key, f"unknown value {value!r} (expected shared or local)")
    return value  # type: ignore[return-value]


def _s3_settings(storage: Any, source: str) -> S3Settings:
    if storage is None:
        storage = {}
    if not isinstance(storage, dict):
        raise ConfigError(source, "storage", "expected a mapping")
    _reject_unknown(storage, {"s3"}, source, "storage.")
    s3 = storage.get("s3") or {}
    if not isinstance(s3, dict):
        raise ConfigError(source, "storage.s3", "expected a mapping")
    _reject_unknown(s3, {"endpoint_url", "region", "max_attempts"}, source, "storage.s3.")
    endpoint = s3.get("endpoint_url")
    if endpoint is not None:
        endpoint = _string(endpoint, "storage.s3.endpoint_url", source)
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                source, "storage.s3.endpoint_url", f"expected an http:// or https:// URL, got {endpoint!r}"
            )
    else:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = s3.get("region")
    if region is not None:
        region = _string(region, "storage.s3.region", source)
    else:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    attempts = s3.get("max_attempts", S3Settings.max_attempts)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 100:
        raise ConfigError(source, "storage.s3.max_attempts", f"expected a whole number from 1 to 100, got {attempts!r}")
    return S3Settings(endpoint_url=endpoint.rstrip("/") if endpoint else None, region=region, max_attempts=attempts)


def parse_duration(value: Any) -> int:
    """``7d``, ``12h``, ``30m``, ``45s`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(value)
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


def _compaction(value: Any, source: str) -> CompactionSettings:
    if value is None:
        return CompactionSettings()
    if not isinstance(value, dict):
        raise ConfigError(source, "compaction", "expected a mapping")
    _reject_unknown(value, {"max_small_files", "tombstone_retention", "grace_period"}, source, "compaction.")
    settings = CompactionSettings()
    if "max_small_files" in value:
        n = value["max_small_files"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(source, "compaction.max_small_files", f"expected a whole number of at least 1, got {n!r}")
        settings = replace(settings, max_small_files=n)
    for key, attribute in (
        ("tombstone_retention", "tombstone_retention_seconds"),
        ("grace_period", "grace_period_seconds"),
    ):
        if key in value:
            try:
                seconds = parse_duration(value[key])
            except ValueError:
                raise ConfigError(
                    source, f"compaction.{key}", f"expected a duration such as 7d, 12h, 30m or 0s, got {value[key]!r}"
                ) from None
            settings = replace(settings, **{attribute: seconds})
    return settings


def check_schema_name(name: Any, key: str, source: str) -> str:
    if not isinstance(name, str) or not SAFE_IDENTIFIER.match(name):
        raise ConfigError(
            source,
            key,
            f"{name!r} is not a safe schema name (a letter, then letters, digits or _; at most 63 characters)",
        )
    if name.lower() in RESERVED_SCHEMA_NAMES:
        raise ConfigError(source, key, f"{name!r} is reserved; choose another schema name")
    return name


def _relative_directory(value: Any, key: str, source: str, base: str) -> str:
    text = _string(value, key, source)
    pure = PurePosixPath(text.replace("\\", "/"))
    if "://" in text or pure.is_absolute() or text.startswith("~") or re.match(r"^[A-Za-z]:", text):
        raise ConfigError(source, key, f"{text!r} must be relative to baseDirectory")
    if ".." in pure.parts:
        raise ConfigError(source, key, f"{text!r} leaves baseDirectory ('..' is not allowed)")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise ConfigError(source, key, f"{text!r} names baseDirectory itself, not a folder in it")
    if parts[0] == ".aperio":
        raise ConfigError(source, key, f"{text!r} is inside aperio's own .aperio directory")
    return join_location(base, *parts)


def _schemas(value: Any, config: AperioConfig, source: str) -> tuple[SchemaConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(source, "schemas", "expected a list of schemas")
    seen: dict[str, str] = {}
    schemas = []
    for i, entry in enumerate(value):
        key = f"schemas[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise ConfigError(source, key, "expected a mapping with at least a name")
        _reject_unknown(entry, {"name", "directory", "stateStorage"}, source, f"{key}.")
        if "name" not in entry:
            raise ConfigError(source, f"{key}.name", "missing")
        name = check_schema_name(entry["name"], f"{key}.name", source)
        if name.lower() in seen:
            raise ConfigError(
                source,
                f"{key}.name",
                f"{name!r} is listed twice (schema names are case-insensitive; first at {seen[name.lower()]})",
            )
        seen[name.lower()] = key
        directory = _relative_directory(entry.get("directory", name), f"{key}.directory", source, config.base_directory)
        mode = _state_storage(entry.get("stateStorage", config.state_storage), f"{key}.stateStorage", source)
        schemas.append(SchemaConfig(name=name, directory=directory, state_storage=mode))
    return tuple(schemas)
