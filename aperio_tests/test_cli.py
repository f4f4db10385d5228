"""The `aperio` command end to end, in-process (``main(argv)``), and once as the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aperio_tests.helpers import TEST_CREDENTIALS, S3Server, run_cli


def test_demo_then_status(tmp_path: Path) -> None:
    result = run_cli("demo", str(tmp_path / "demo"), "--with-legacy", "--flights-per-month", "5", "--json")
    assert result.returncode == 0, result.stderr
    config = tmp_path / "demo" / "aperio.yaml"
    assert json.loads(result.stdout) == {"config": str(config), "withLegacy": True}

    result = run_cli("--config", str(config), "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["baseDirectory"] == str(tmp_path / "demo" / "lake")
    assert report["aperioDirectory"] == str(tmp_path / "demo" / "lake" / ".aperio")
    assert report["legacyCatalog"] == [".duckdb/shared.duckdb"]
    by_name = {s["name"]: s for s in report["schemas"]}
    assert sorted(by_name) == ["flights", "reference"]
    assert by_name["flights"]["stateStorage"] == "shared"
    assert by_name["flights"]["legacyFiles"] == [
        ".conversions.json",
        ".conversions.json.lock",
        ".generated-model.json",
        ".partition_status.duckdb",
    ]

    human = run_cli("status", env={"APERIO_CONFIG": str(config)})
    assert human.returncode == 0
    assert "schema flights  (shared)" in human.stdout and ".partition_status.duckdb" in human.stdout


def test_the_installed_script_and_python_m_are_the_command(tmp_path: Path) -> None:
    """The console script `make install` puts beside the interpreter, and ``python -m aperio_assets``,
    run the command and exit with its code (every other test calls ``main(argv)`` in-process)."""
    for command in ([str(Path(sys.executable).with_name("aperio"))], [sys.executable, "-m", "aperio_assets"]):
        # a real process: what is tested is the entry point and the process's exit status
        done = subprocess.run(
            [*command, "status"], cwd=tmp_path, env={**os.environ}, capture_output=True, text=True, timeout=120
        )
        assert (done.returncode, done.stdout) == (2, ""), (command, done.stderr)
        assert done.stderr.strip() == "aperio: error: aperio.yaml: configuration file not found", command


def test_status_on_s3_lake(tmp_path: Path, s3: S3Server, s3_bucket: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1")
    client.put_object(Bucket=s3_bucket, Key="data/sales/2024.csv", Body=b"a,b\n1,2\n")
    client.put_object(Bucket=s3_bucket, Key="data/hr/people.json", Body=b"[]")
    client.put_object(Bucket=s3_bucket, Key="data/.aperio/sales/partition_status/0001.parquet", Body=b"x" * 10)
    config = tmp_path / "aperio.yaml"
    config.write_text(f"baseDirectory: s3://{s3_bucket}/data\nstorage:\n  s3:\n    endpoint_url: {s3.endpoint_url}\n")
    result = run_cli("--config", str(config), "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["aperioDirectory"] == f"s3://{s3_bucket}/data/.aperio"
    assert report["s3"] == {"endpoint_url": s3.endpoint_url, "region": "us-east-1"}
    schemas = {s["name"]: s for s in report["schemas"]}
    assert sorted(schemas) == ["hr", "sales"]
    ps = schemas["sales"]["stateTables"]["partition_status"]
    assert (ps["files"], ps["liveRows"], ps["unreadableFiles"]) == (0, 0, ["0001.parquet"])
    for secret in TEST_CREDENTIALS.values():
        assert secret not in result.stdout + result.stderr


def test_debug_logs_never_show_credentials(tmp_path: Path, s3: S3Server, s3_bucket: str, capfd, monkeypatch) -> None:
    """`--debug` shows botocore's request logs (Authorization headers included) with every
    credential redacted, whether it has AWS's key-id shape or not, even after a run without
    `--debug` in the same process (which quietens botocore)."""
    from aperio_assets.cli.app import main

    config = tmp_path / "aperio.yaml"
    config.write_text(f"baseDirectory: s3://{s3_bucket}/data\nstorage:\n  s3:\n    endpoint_url: {s3.endpoint_url}\n")
    for key_id in ("AKIAIOSFODNN7EXAMPLE", TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"]):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-value-123")
        assert main(["--config", str(config), "status", "--json"]) == 0
        capfd.readouterr()
        assert main(["--config", str(config), "--debug", "status"]) == 0
        err = capfd.readouterr().err
        # the botocore request logs that used to leak are there
        assert "Authorization" in err and "X-Amz-Security-Token" in err and "Sending http request" in err
        assert "<redacted>" in err
        for secret in (key_id, TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"], "session-token-value-123"):
            assert secret not in err


def test_redact_every_header_shape(monkeypatch) -> None:
    """Header values are redacted whole, in every shape a library logs them, without eating the
    rest of a line."""
    from aperio_assets.cli.redact import redact

    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    lines = [
        # botocore's AWSPreparedRequest repr (SigV4)
        (
            "headers={'Authorization': b'AWS4-HMAC-SHA256 Credential=mykeyid/20260101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=abc123', 'X-Amz-Security-Token': b'tok+en/=', 'Host': 'h'}",
            "headers={'Authorization': b<redacted>, 'X-Amz-Security-Token': b<redacted>, 'Host': 'h'}",
        ),
        # SigV2 and http.client's wire dump (escaped CRLF)
        (
            "send: b'GET / HTTP/1.1\\r\\nAuthorization: AWS mykeyid:c2lnbmF0dXJl\\r\\nHost: h\\r\\n'",
            "send: b'GET / HTTP/1.1\\r\\nAuthorization: <redacted>\\r\\nHost: h\\r\\n'",
        ),
        # a canonical request, and a presigned URL
        ("x-amz-security-token:tok+en/=", "x-amz-security-token:<redacted>"),
        (
            "GET /k?X-Amz-Credential=mykeyid%2F20260101&X-Amz-Security-Token=tok&X-Amz-Expires=60",
            "GET /k?X-Amz-Credential=<redacted>&X-Amz-Security-Token=<redacted>&X-Amz-Expires=60",
        ),
        ("{'key': 'AKIAIOSFODNN7EXAMPLE', 'secret': 'hush'}", "{'key': '<redacted>', 'secret': '<redacted>'}"),
    ]
    for line, expected in lines:
        assert redact(line) == expected


def test_debug_shows_tracebacks_without_credentials(tmp_path: Path, capfd, monkeypatch) -> None:
    from aperio_assets.cli.app import main

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aperio-secret-in-a-path")
    config = tmp_path / "aperio-secret-in-a-path" / "aperio.yaml"
    assert main(["--config", str(config), "status"]) == 2
    assert "Traceback" not in capfd.readouterr().err
    assert main(["--config", str(config), "--debug", "status"]) == 2
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err and "ConfigError" in err
    assert "aperio-secret-in-a-path" not in err.split("aperio: error:")[1]  # the traceback part
