"""Progress phases, rate and ETA of an indexing job (one place for every executor), and the path
map the cluster executors apply to the raster paths they send."""

from __future__ import annotations

import io
import json

import pytest

from plugin.core.errors import EngineError
from plugin.core.indexing.path_map import parse_path_map, to_cluster, to_local
from plugin.core.indexing.progress import (
    PhaseMessage,
    RateMeter,
    captioning,
    describe,
    phase_info,
    planning,
    starting_workers,
)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rate_and_eta_over_a_sliding_window() -> None:
    clock = Clock()
    m = RateMeter(clock, window_s=60.0)
    assert m.update(0, 100) == (0.0, None)  # the clock starts: nothing to say yet
    clock.t += 10
    rate, eta = m.update(20, 100)
    assert rate == pytest.approx(2.0) and eta == pytest.approx(40.0)
    clock.t += 10
    rate, eta = m.update(40, 100)
    assert rate == pytest.approx(2.0) and eta == pytest.approx(30.0)
    # the job slows down to 0.5 tiles/s for two minutes: the window forgets the fast start
    for _ in range(12):
        clock.t += 10
        rate, eta = m.update(40 + 5 * (_ + 1), 200)
    assert rate == pytest.approx(0.5, rel=0.2) and eta == pytest.approx((200 - 100) / rate)
    # a count that goes back (another job) starts again instead of a negative rate
    clock.t += 1
    assert m.update(3, 10) == (0.0, None)


def test_captioning_wrapper_adds_rate_and_eta_to_every_count() -> None:
    clock = Clock()
    got: list[tuple[int, int, str, dict]] = []
    report = captioning(lambda d, t, m: got.append((d, t, str(m), phase_info(m))), RateMeter(clock))
    report(0, 0, planning())  # no count: passed through untouched
    report(0, 10, "a: 0 tiles")
    clock.t += 4
    report(4, 10, "a: 4 tiles")
    assert got[0][3] == {"phase": "planning"}
    assert got[1][3] == {"phase": "captioning", "rate": 0.0, "eta_s": None}
    assert got[2][:3] == (4, 10, "a: 4 tiles") and got[2][3] == {"phase": "captioning", "rate": 1.0, "eta_s": 6.0}
    assert describe(4, 10, got[2][3]) == "captioned 4/10 tiles · 1.0 tiles/s · about 6 s left"
    assert describe(1, 500, {"phase": "captioning", "rate": 0.25, "eta_s": 1996}) == \
        "captioned 1/500 tiles · 4.0 s/tile · about 33 min 16 s left"


def test_duration_is_precise_for_an_eta_and_rough_for_an_estimate() -> None:
    """One formatter: the ETA of a running job (precise) and the dock's tiling hint (rough, never '0 s')."""
    from plugin.core.progress_text import duration

    cases = [(0.2, "0 s", "1 s"), (59.4, "59 s", "59 s"), (60, "1 min 00 s", "1 min"), (1996, "33 min 16 s", "33 min"),
             (3599, "59 min 59 s", "60 min"), (7500, "2 h 05 min", "2.1 h"), (-5, "0 s", "1 s")]
    for seconds, precise, rough in cases:
        assert (duration(seconds), duration(seconds, rough=True)) == (precise, rough), seconds


def test_phase_messages_are_strings_with_fields() -> None:
    m = starting_workers(3, 2)  # a restarted actor counts twice: never more than n
    assert isinstance(m, str) and m == "starting workers 2/2 ready"
    assert phase_info(m) == {"phase": "starting", "ready": 2, "workers": 2}
    assert phase_info("plain") == {} and phase_info(PhaseMessage("x", phase="merging")) == {"phase": "merging"}


def test_worker_sends_phase_fields_beside_the_message() -> None:
    from plugin.core.worker.worker import Job

    out = io.StringIO()
    job = Job("7", "index", {}, lambda msg: out.write(json.dumps(msg) + "\n"))
    job.progress(0, 0, planning("planning 2 raster(s)"))
    job.progress(0, 0, starting_workers(0, 2))
    job.progress(0, 0, starting_workers(1, 2))  # a phase change is never dropped by the rate limit
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e.get("phase") for e in events] == ["planning", "starting", "starting"]
    assert events[2]["ready"] == 1 and events[2]["workers"] == 2 and events[2]["message"] == "starting workers 1/2 ready"


@pytest.mark.parametrize("path, want", [
    ("/mnt/nas/ortho/a.tif", "s3://bucket/ortho/a.tif"),
    ("/mnt/nas/ortho/2024/b.tif", "/shared/b.tif"),  # the longest prefix wins
    ("/mnt/nasty/a.tif", "/mnt/nasty/a.tif"),  # whole path components only
    ("D:\\ortho\\c.tif", "https://host/ortho/c.tif"),  # a Windows path read over HTTP
    ("https://elsewhere/d.tif", "https://elsewhere/d.tif"),
])
def test_path_map_local_to_cluster_and_back(path: str, want: str) -> None:
    pairs = parse_path_map(["/mnt/nas=s3://bucket", "/mnt/nas/ortho/2024/=/shared/", ["D:\\ortho", "https://host/ortho"]])
    assert to_cluster(path, pairs) == want
    if want != path and "\\" not in path:
        assert to_local(want, pairs) == path


def test_path_map_bad_entries_are_one_line_errors() -> None:
    assert parse_path_map(None) == [] and parse_path_map("/a=/b;/c=/d") == [("/a", "/b"), ("/c", "/d")]
    for bad in (["/a"], ["=/b"], [["/a"]]):
        with pytest.raises(EngineError) as e:
            parse_path_map(bad)
        assert "\n" not in str(e.value)


def test_no_rate_from_a_burst_of_results() -> None:
    clock = Clock()
    m = RateMeter(clock)
    m.update(0, 100)
    clock.t += 0.05
    assert m.update(24, 100) == (0.0, None)  # a cluster's first batches arrive together: no 480 tiles/s
    clock.t += 3.0
    rate, eta = m.update(30, 100)
    assert rate == pytest.approx(30 / 3.05) and eta == pytest.approx(70 / rate)


@pytest.mark.parametrize("argv, words", [
    (["--path-map", "/a=/b"], "--path-map does not apply to --executor local"),
    (["--executor", "ray", "--ray-dashboard", "http://h:8265", "--shared-dir", "/s"],
     "--ray-dashboard, --shared-dir do not apply to --executor ray"),
    (["--executor", "ray", "--path-map", "/a"], "path map entry '/a': expected LOCAL_PREFIX=CLUSTER_PREFIX"),
    (["--executor", "ray-job", "--ray-address", "h:6379"], "--ray-address does not apply to --executor ray-job"),
    (["--executor", "ray", "--keep-shards"], "--keep-shards does not apply to --executor ray"),
])
def test_cli_cluster_flags_are_checked_in_one_line(tmp_path, capsys, argv, words) -> None:
    from plugin.core.cli import main
    from tests.core import rasters

    src = rasters.write_raster(str(tmp_path / "a.tif"), rasters.pattern(3, 64, 64, seed=0), crs="EPSG:32618")
    rc = main(["index", "--index", str(tmp_path / "idx"), "--quiet", *argv, src])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err == f"error: {words}", err
    assert not (tmp_path / "idx").exists()  # nothing created for a refused job


def test_cli_passes_the_cluster_options_to_the_job(monkeypatch, tmp_path) -> None:
    """--executor ray-job with its flags reaches index_rasters as the agreed executor options."""
    import plugin.core.cli as cli
    from plugin.core.indexing.job import IndexReport

    seen: dict = {}

    def fake_index(index_dir, sources, **kw):  # records what the CLI asks for; the job itself is tested elsewhere
        seen.update(kw)
        return IndexReport()

    monkeypatch.setattr("plugin.core.indexing.job.index_rasters", fake_index)  # what IndexRequest.run calls
    from tests.core import rasters

    src = rasters.write_raster(str(tmp_path / "a.tif"), rasters.pattern(3, 64, 64, seed=0), crs="EPSG:32618")
    rc = cli.main(["index", "--index", str(tmp_path / "idx"), "--quiet", "--executor", "ray-job",
                   "--ray-dashboard", "http://head:8265", "--shared-dir", "s3://b/stage", "--path-map", "/mnt/nas=s3://b/nas",
                   "--path-map", "D:\\o=/o", "--caption-workers", "3", "--keep-shards", src])
    assert rc == 0 and seen["executor"] == "ray-job"
    assert seen["executor_options"] == {"dashboard_url": "http://head:8265", "shared_dir": "s3://b/stage", "caption_workers": 3,
                                        "keep_shards": True,
                                        "path_map": [["/mnt/nas", "s3://b/nas"], ["D:\\o", "/o"]]}
