"""Configuration: defaults, discovery, and one clear line with exit 2 for every invalid input."""

from __future__ import annotations

from pathlib import Path

import pytest

from aperio_assets.config import load_config, parse_duration
from aperio_assets.lake import open_lake
from aperio_tests.helpers import S3Server, run_cli


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "conf" / "aperio.yaml", "baseDirectory: ../lake\n"))
    assert config.base_directory == str(tmp_path / "lake")
    assert config.aperio_directory == str(tmp_path / "lake" / ".aperio")
    assert config.state_storage == "shared"
    assert config.compaction.max_small_files == 64
    assert config.compaction.tombstone_retention_seconds == 7 * 86400
    assert config.compaction.grace_period_seconds == 3600
    assert config.s3.endpoint_url is None and config.s3.region == "us-east-1"
    assert config.configured_schemas is None


def test_explicit_settings(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path / "aperio.yaml",
            """
baseDirectory: s3://bucket/data/
aperioDirectory: s3://meta/.aperio
stateStorage: shared
legacyDirectory: /var/lib/aperio/.aperio
storage:
  s3: {endpoint_url: "http://127.0.0.1:9000/", region: eu-west-1}
compaction: {max_small_files: 8, tombstone_retention: 12h, grace_period: 0s}
schemas:
  - name: flights
    directory: raw/flights
    stateStorage: local
  - reference
""",
        )
    )
    assert config.base_directory == "s3://bucket/data"
    assert config.aperio_directory == "s3://meta/.aperio"
    assert config.legacy_directory == "/var/lib/aperio/.aperio"
    assert config.s3.endpoint_url == "http://127.0.0.1:9000" and config.s3.region == "eu-west-1"
    assert not config.s3.use_ssl
    assert config.compaction.max_small_files == 8
    assert config.compaction.tombstone_retention_seconds == 12 * 3600
    assert config.compaction.grace_period_seconds == 0
    assert [(s.name, s.directory, s.state_storage) for s in config.configured_schemas or ()] == [
        ("flights", "s3://bucket/data/raw/flights", "local"),
        ("reference", "s3://bucket/data/reference", "shared"),
    ]


def test_s3_settings_from_standard_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    config = load_config(write(tmp_path / "aperio.yaml", "baseDirectory: s3://b/x\n"))
    assert config.s3.endpoint_url == "http://127.0.0.1:9999" and config.s3.region == "ap-south-1"


def test_config_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "aperio.yaml", "baseDirectory: cwd-lake\n")
    env_config = write(tmp_path / "env" / "aperio.yaml", "baseDirectory: env-lake\n")
    monkeypatch.chdir(tmp_path)
    assert load_config().base_directory == str(tmp_path / "cwd-lake")
    monkeypatch.setenv("APERIO_CONFIG", str(env_config))
    assert load_config().base_directory == str(tmp_path / "env" / "env-lake")
    assert load_config(tmp_path / "aperio.yaml").base_directory == str(tmp_path / "cwd-lake")


def test_schema_discovery(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for folder in ("flights", "reference", ".hidden", "_scratch", "has space", "catalog"):
        (tmp_path / "lake" / folder).mkdir(parents=True)
    (tmp_path / "lake" / ".aperio").mkdir()
    (tmp_path / "lake" / "loose.csv").write_text("a\n1\n")
    lake = open_lake(write(tmp_path / "aperio.yaml", "baseDirectory: lake\nstateStorage: local\n"))
    schemas = lake.schemas()
    assert [(s.name, s.directory, s.state_storage) for s in schemas] == [
        ("flights", str(tmp_path / "lake" / "flights"), "local"),
        ("reference", str(tmp_path / "lake" / "reference"), "local"),
    ]
    assert "'has space'" in caplog.text and "'catalog'" in caplog.text


def test_durations() -> None:
    assert parse_duration("7d") == 604800 and parse_duration("30m") == 1800
    assert parse_duration(45) == 45 and parse_duration("2w") == 1209600
    for bad in ("soon", "-1d", "1y", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


BAD_CONFIGS = [
    ("stateStorage: sideways\n", "stateStorage: unknown value 'sideways' (expected shared or local)"),
    ("baseDirectory: [unclosed\n", "not valid YAML at line"),
    ("schemas:\n  - name: bad-name\n", "schemas[0].name: 'bad-name' is not a safe schema name"),
    ("schemas:\n  - name: 'x; DROP SCHEMA y'\n", "schemas[0].name: 'x; DROP SCHEMA y' is not a safe"),
    ("schemas:\n  - name: aperio\n", "schemas[0].name: 'aperio' is reserved"),
    ("schemas:\n  - name: ok\n    directory: ../outside\n", "schemas[0].directory: '../outside' leaves"),
    ("schemas:\n  - name: ok\n    directory: a/../../b\n", "schemas[0].directory: 'a/../../b' leaves"),
    ("schemas:\n  - name: ok\n    directory: /etc\n", "schemas[0].directory: '/etc' must be relative"),
    ("schemas:\n  - name: ok\n    stateStorage: both\n", "schemas[0].stateStorage: unknown value 'both'"),
    ("schemas:\n  - a\n  - A\n", "schemas[1].name: 'A' is listed twice"),
    ("stateStorgae: shared\n", "stateStorgae: unknown setting"),
    (
        "storage:\n  s3:\n    aws_secret_access_key: abc\n",
        "storage.s3.aws_secret_access_key: credentials are never read from the configuration file",
    ),
    ("compaction:\n  tombstone_retention: forever\n", "compaction.tombstone_retention: expected a duration"),
    ("compaction:\n  grace_period: -5m\n", "compaction.grace_period: expected a duration"),
    ("storage:\n  s3:\n    max_attempts: 0\n", "storage.s3.max_attempts: expected a whole number"),
    ("compaction:\n  max_small_files: 0\n", "compaction.max_small_files: expected a whole number"),
    ("baseDirectory: gs://bucket/x\n", "baseDirectory: unsupported location 'gs://bucket/x'"),
    ("- just\n- a list\n", "the top level must be a mapping"),
    ("baseDirectory: does-not-exist\n", "baseDirectory: directory"),
]


@pytest.mark.parametrize(("content", "expected"), BAD_CONFIGS, ids=[e for _, e in BAD_CONFIGS])
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "lake").mkdir()
    # Most cases add to a valid lake setting; those about baseDirectory or the top level stand alone.
    standalone = "baseDirectory" in content or content.startswith("-")
    config = write(tmp_path / "aperio.yaml", content if standalone else "baseDirectory: lake\n" + content)
    result = run_cli("--config", str(config), "status")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"aperio: error: {config}: "), lines[0]
    assert expected in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert "abc" not in result.stderr  # a secret put in the file is never echoed


def test_missing_config_file(tmp_path: Path) -> None:
    result = run_cli("status", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "aperio: error: aperio.yaml: configuration file not found"
    result = run_cli("status", env={"APERIO_CONFIG": str(tmp_path / "nope.yaml")})
    assert result.stderr.strip() == f"aperio: error: {tmp_path / 'nope.yaml'}: configuration file not found"


def test_unreadable_config_file(tmp_path: Path) -> None:
    config = write(tmp_path / "aperio.yaml", "baseDirectory: .\n")
    (tmp_path / "aperio.yaml").write_bytes(b"\xff\xfe\x00bad")
    result = run_cli("--config", str(config), "status")
    assert result.returncode == 2
    assert result.stderr.startswith(f"aperio: error: {config}: cannot read configuration file")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli().returncode == 2
    assert run_cli("no-such-command").returncode == 2
    assert run_cli("demo", str(tmp_path / "d"), "--flights-per-month", "0").returncode == 2


def test_missing_bucket_names_the_key(tmp_path: Path, s3: S3Server) -> None:
    config = write(
        tmp_path / "aperio.yaml",
        f"baseDirectory: s3://no-such-bucket/lake\nstorage:\n  s3:\n    endpoint_url: {s3.endpoint_url}\n",
    )
    result = run_cli("--config", str(config), "status")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"aperio: error: {config}: baseDirectory: bucket 'no-such-bucket' does not exist at {s3.endpoint_url}"
    )


def test_local_mode_on_s3_warns_but_works(tmp_path: Path, s3: S3Server, s3_bucket: str) -> None:
    config = write(
        tmp_path / "aperio.yaml",
        f"baseDirectory: s3://{s3_bucket}/lake\nstateStorage: local\n"
        f"storage:\n  s3:\n    endpoint_url: {s3.endpoint_url}\n",
    )
    result = run_cli("--config", str(config), "status", "--json")
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "stateStorage: local state cannot be shared" in result.stderr
    assert '"stateStorage": "local"' in result.stdout
    assert "aperio-test-secret" not in result.stdout + result.stderr
