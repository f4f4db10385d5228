"""How many worker processes a refresh starts follows where the files are, not how many conversions
each process keeps in flight (``$APERIO_S3_FILES_IN_FLIGHT=1`` must not make an S3 lake use the
local-disk rule, which caps the workers at the cores)."""

from __future__ import annotations

import pytest

from aperio_assets.conversion import parallel
from aperio_assets.conversion.refresh import FILES_IN_FLIGHT_ENV, S3_FILES_IN_FLIGHT, SchemaRefresh
from aperio_tests.helpers import LakeCase, put


class _Stop(Exception):
    pass


@pytest.mark.parametrize("in_flight", [None, "1"])
def test_worker_rule_follows_the_storage(
    lake_case: LakeCase, monkeypatch: pytest.MonkeyPatch, in_flight: str | None
) -> None:
    if in_flight is None:
        monkeypatch.delenv(FILES_IN_FLIGHT_ENV, raising=False)
    else:
        monkeypatch.setenv(FILES_IN_FLIGHT_ENV, in_flight)
    lake = lake_case.lake()
    for i in range(40):
        put(lake, f"sales/t{i}.csv", f"x\n{i}\n".encode())
    run = SchemaRefresh(lake, lake.schema("sales"))
    on_s3 = lake_case.kind == "s3"
    assert run.remote is on_s3
    assert run.files_in_flight == ((int(in_flight) if in_flight else S3_FILES_IN_FLIGHT) if on_s3 else 1)
    asked: list[bool] = []
    real_shares = parallel.shares

    def spy(todo, workers, *, remote=True):
        asked.append(remote)
        raise _Stop(len(real_shares(todo, workers, remote=remote)))

    monkeypatch.setattr(parallel, "shares", spy)
    _, todo = run.plan({})
    with pytest.raises(_Stop) as stopped:
        parallel.convert_in_workers(run, todo, {}, lambda rows, gone: None, 4)
    assert asked == [on_s3]
    if on_s3:  # 41 files on S3: four workers, whatever the files in flight
        assert stopped.value.args == (4,)
