"""Job mode without a cluster: the shard files, the engine package zip and the Jobs REST client's
errors and auth header against a loopback HTTP server (127.0.0.1, random port). Fast; no Ray needed."""

from __future__ import annotations

import http.server
import io
import json
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="job mode reads Parquet shards with pyarrow")

from plugin.core.errors import EngineError  # noqa: E402
from plugin.core.indexing.cluster.ray_job_api import JobsApi, check_dashboard, package_zip  # noqa: E402
from plugin.core.indexing.cluster.ray_job_shards import (  # noqa: E402
    drop_failed_shards,
    import_pyarrow,
    list_shards,
    read_shard,
    ref_from_json,
    ref_to_json,
    remove_merged_shards,
    shard_name,
    shard_rows,
    shard_tiles,
    write_shard,
)
from plugin.core.types import CaptionVariant, PixelWindow, TileRef  # noqa: E402


def _ref(i: int, rid: str = "r1") -> TileRef:
    return TileRef(f"t{i:03d}", rid, PixelWindow(i * 48, 0, 48, 48), 1, ((0.0, 0.0), (1.5, 0.0), (1.5, 2.0), (0.0, 0.0)))


def test_shard_round_trip_and_refusals(tmp_path: Path) -> None:
    refs = [_ref(i) for i in range(3)] + [_ref(9, "r2")]
    per_tile = [[CaptionVariant(f"a{i}", "f", "c"), CaptionVariant(f"b{i}", "g", "d", fallback="no answer")] for i in range(4)]
    vecs = [np.random.default_rng(i).random((2, 8), dtype=np.float32) for i in range(4)]
    name = write_shard(str(tmp_path), "fp1", refs, per_tile, vecs)
    assert name == shard_name([r.tile_id for r in refs]) and name.startswith("shard-t000-4-")
    assert name.rsplit("-", 1)[1] == shard_name([r.tile_id for r in reversed(refs)]).rsplit("-", 1)[1]  # the tile set
    empty_name = write_shard(str(tmp_path), "fp1", [_ref(5)], empty=True)
    assert list_shards(str(tmp_path)) == sorted([name, empty_name]) and not [n for n in os.listdir(tmp_path) if "tmp" in n]
    path = str(tmp_path / name)
    assert shard_tiles(path) == [(r.tile_id, r.raster_id) for r in refs]
    done, empty, failed = read_shard(path, "r1", {"t000", "t002", "t009"}, "fp1", 8)
    assert [t for t, _, _ in done] == ["t000", "t002"] and not empty and not failed  # only the raster and tiles asked
    assert done[1][1] == per_tile[2] and done[1][1][1].fallback == "no answer"  # fallbacks stay fallbacks
    np.testing.assert_array_equal(done[1][2], vecs[2])
    assert read_shard(str(tmp_path / empty_name), "r1", {"t005"}, "fp1", 8) == ([], ["t005"], [])
    with pytest.raises(EngineError, match="'fp1'.*'fp2'"):
        read_shard(path, "r1", {"t000"}, "fp2", 8)
    with pytest.raises(EngineError, match="16 values for 2 variants of 4-d"):  # vectors of another embedder's size
        read_shard(path, "r1", {"t000"}, "fp1", 4)
    assert ref_from_json(json.loads(json.dumps(ref_to_json(refs[1])))) == refs[1]


def test_package_zip_is_deterministic_and_holds_the_package_folder(tmp_path: Path) -> None:
    pkg = tmp_path / "mypkg"
    (pkg / "core" / "__pycache__").mkdir(parents=True)
    (pkg / "tests").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("x = 1\n")
    (pkg / "core" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (pkg / "tests" / "t.py").write_text("")
    blob = package_zip(str(pkg))
    os.utime(pkg / "core" / "a.py", (1e9, 1e9))
    assert package_zip(str(pkg)) == blob  # same code, same bytes, same content-hashed name
    assert sorted(zipfile.ZipFile(io.BytesIO(blob)).namelist()) == ["mypkg/__init__.py", "mypkg/core/a.py"]


class _Dashboard(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str]] = []
    token = "s3cret-token"

    def _answer(self) -> None:
        auth = self.headers.get("Authorization", "")
        type(self).seen.append((self.command, self.path, auth))
        if auth != f"Bearer {self.token}":
            body, code = b"Unauthorized: Missing authentication token", 401
        elif self.path == "/api/version":
            body, code = json.dumps({"ray_version": "2.60.0", "version": "4"}).encode(), 200
        elif self.path.startswith("/api/packages/"):
            body, code = (b"", 404) if self.command == "GET" else (b"", 200)
        else:
            body, code = b"Traceback (most recent call last):\n  ...\nValueError: no such job", 500
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dashboard():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dashboard)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Dashboard.seen = []
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_jobs_api_sends_the_token_as_bearer_and_errors_are_one_line(dashboard, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", _Dashboard.token)
    api = JobsApi(dashboard)
    assert api.version()["ray_version"] == "2.60.0"
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "m.py").write_text("")
    uri = api.upload_package(str(tmp_path / "p"))
    assert uri.startswith("gcs://_ray_pkg_") and uri.endswith(".zip")
    assert [(m, p.split("/")[-1] == uri[6:]) for m, p, _ in _Dashboard.seen[1:]] == [("GET", True), ("PUT", True)]
    assert all(a == f"Bearer {_Dashboard.token}" for _, _, a in _Dashboard.seen)
    with pytest.raises(EngineError) as err:
        api.submit("sis-x", "python -m x", {})
    assert str(err.value) == "Ray dashboard POST /api/jobs/: HTTP 500: ValueError: no such job"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong-token")
    with pytest.raises(EngineError) as err:
        check_dashboard({"dashboard_url": dashboard, "shared_dir": str(tmp_path)})
    msg = str(err.value)
    assert "refused the request (401)" in msg and "RAY_AUTH_TOKEN" in msg and "wrong-token" not in msg and "\n" not in msg


@pytest.mark.parametrize("options, match", [
    ({"shared_dir": "/x"}, "dashboard URL"),
    ({"dashboard_url": "http://h:8265"}, "--shared-dir"),
    ({"dashboard_url": "http://h:8265", "shared_dir": "s3://bucket/stage"}, "not a URI"),
    ({"dashboard_url": "head:8265", "shared_dir": "/x"}, "expected http://host:8265"),
])
def test_job_mode_options_are_refused_in_one_line(options: dict, match: str) -> None:
    with pytest.raises(EngineError, match=match):
        check_dashboard(options)


def test_failed_rows_round_trip_are_not_settled_and_are_dropped_before_a_resubmission(tmp_path: Path) -> None:
    """Unreadable tiles travel as failed rows with their reason: read back as failures (never as
    captions or empties), not counted as covered (the next job reads them again), and a folder's
    shards of failed rows only are removed before a job is resubmitted into it."""
    d = str(tmp_path)
    ok = write_shard(d, "fp1", [_ref(0)], [[CaptionVariant("a", "f", "c")]], [np.ones((1, 4), np.float32)])
    bad = write_shard(d, "fp1", [_ref(1), _ref(2), _ref(7, "r2")],
                      reasons=["cannot be read: TIFFReadEncodedTile() failed", "", "cannot be read: block 3"])
    with pytest.raises(EngineError, match="2 reasons for 1 failed tiles"):
        write_shard(d, "fp1", [_ref(3)], reasons=["a", "b"])
    done, empty, failed = read_shard(os.path.join(d, bad), "r1", {"t001", "t002", "t007"}, "fp1", 4)
    assert not done and not empty
    assert failed == [("t001", "cannot be read: TIFFReadEncodedTile() failed"), ("t002", "cannot be read")]
    assert read_shard(os.path.join(d, bad), "r2", {"t007"}, "fp1", 4)[2] == [("t007", "cannot be read: block 3")]
    with pytest.raises(EngineError, match="'fp1'.*'fp2'"):  # failed rows are filed under the fingerprint too
        read_shard(os.path.join(d, bad), "r1", {"t001"}, "fp2", 4)
    assert shard_rows(os.path.join(d, bad)) == [("t001", "r1", True), ("t002", "r1", True), ("t007", "r2", True)]
    assert shard_tiles(os.path.join(d, bad)) == [("t001", "r1"), ("t002", "r1"), ("t007", "r2")]
    assert shard_tiles(os.path.join(d, bad), settled=True) == []
    assert shard_tiles(os.path.join(d, ok), settled=True) == [("t000", "r1")]
    assert drop_failed_shards(d) == [bad] and list_shards(d) == [ok]  # the captions stay
    assert drop_failed_shards(d) == []


def test_shard_written_before_the_failed_column_still_reads(tmp_path: Path) -> None:
    """A shard from before failed rows existed (no `failed`/`reason` columns): every row is settled."""
    _, pq = import_pyarrow()
    name = write_shard(str(tmp_path), "fp1", [_ref(0), _ref(1)], [[CaptionVariant("a", "f", "c")]] * 2,
                       [np.full((1, 4), i, np.float32) for i in range(2)])
    path = str(tmp_path / name)
    table = pq.read_table(path)
    pq.write_table(table.drop(["failed", "reason"]), path)
    assert "failed" not in pq.read_schema(path).names
    done, empty, failed = read_shard(path, "r1", {"t000", "t001"}, "fp1", 4)
    assert [t for t, _, _ in done] == ["t000", "t001"] and not empty and not failed
    np.testing.assert_array_equal(done[1][2], np.full((1, 4), 1, np.float32))
    assert shard_rows(path) == [("t000", "r1", False), ("t001", "r1", False)]
    assert shard_tiles(path, settled=True) == [("t000", "r1"), ("t001", "r1")]
    assert drop_failed_shards(str(tmp_path)) == [] and list_shards(str(tmp_path)) == [name]
    empty_name = write_shard(str(tmp_path), "fp1", [_ref(5)], empty=True)
    epath = str(tmp_path / empty_name)
    pq.write_table(pq.read_table(epath).drop(["failed", "reason"]), epath)
    assert read_shard(epath, "r1", {"t005"}, "fp1", 4) == ([], ["t005"], [])


def test_merged_shards_are_removed_the_rest_is_kept_and_folders_go_last(tmp_path: Path) -> None:
    """A shard goes once the index holds every row of it (captioned or empty; failed rows were
    reported); a shard with one row the index lacks stays, and so do every folder and manifest of the
    chain; once nothing is kept, manifests, temporary leftovers and the folders go, nothing else."""
    old, cur = str(tmp_path / "jobs" / "sis-old"), str(tmp_path / "jobs" / "sis-cur")
    vec = [np.ones((1, 4), np.float32)]
    for d in (old, cur):
        os.makedirs(d)
        (Path(d) / "manifest.json").write_text("{}")
    a = write_shard(old, "fp1", [_ref(0)], [[CaptionVariant("a", "f", "c")]], vec)
    b = write_shard(cur, "fp1", [_ref(1)], [[CaptionVariant("b", "f", "c")]], vec)
    e = write_shard(cur, "fp1", [_ref(2)], empty=True)
    f = write_shard(cur, "fp1", [_ref(3)], reasons=["cannot be read"])
    other = write_shard(cur, "fp1", [_ref(4, "r2")], [[CaptionVariant("c", "f", "c")]], vec)  # a raster not in this run
    (Path(cur) / ".tmp-0123.parquet").write_bytes(b"half a shard")  # a writer that died
    asked: list[str] = []

    def settled(rid: str) -> set[str]:
        asked.append(rid)
        return {"t000", "t001", "t002"} if rid == "r1" else set()

    sizes = sum(os.path.getsize(os.path.join(d, n)) for d, n in ((old, a), (cur, b), (cur, e), (cur, f)))
    assert remove_merged_shards([old, cur], settled) == (4, sizes, [])
    assert list_shards(old) == [] and list_shards(cur) == [other]
    assert sorted(asked) == ["r1", "r2"]  # asked once per raster, not per row
    assert os.path.exists(os.path.join(old, "manifest.json")) and os.path.exists(os.path.join(cur, "manifest.json"))
    # The index now holds that raster too: everything goes, the folders last; a foreign file keeps its folder.
    (Path(old) / "notes.txt").write_text("not ours")
    size = os.path.getsize(os.path.join(cur, other))
    assert remove_merged_shards([old, cur], lambda rid: {"t004"}) == (1, size, [cur])
    assert not os.path.exists(cur) and sorted(os.listdir(old)) == ["notes.txt"]  # its manifest went, the file stayed
    assert remove_merged_shards([old, cur], settled) == (0, 0, [])  # nothing more to do, nothing raised


def test_index_rasters_calls_the_clean_up_after_a_finished_run_only_and_never_fails_for_it(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    """The job's clean-up hook (`remove_merged`, job mode's) runs after the last flush of a run that
    finished, sees the committed tiles, and its line goes into the report notes; a clean-up that
    raises is a note, not a failed run; a canceled run never cleans up."""
    from plugin.core.errors import Canceled
    from plugin.core.indexing import index_rasters
    from plugin.core.indexing.local import LocalExecutor
    from plugin.core.rasters.raster import open_raster
    from plugin.core.types import RasterSource
    from tests.core import rasters

    scene = rasters.north_up(str(tmp_path), width=128, height=128)
    rid = open_raster(scene).raster_id
    seen: list[int] = []

    def remove_merged(self, settled):
        seen.append(len(settled(rid)))  # what the index holds of the raster by now
        return "removed 2 merged Ray job shard(s) (0.1 MB) from /shared/jobs"

    monkeypatch.setattr(LocalExecutor, "remove_merged", remove_merged, raising=False)
    idx = str(tmp_path / "idx")
    rep = index_rasters(idx, [RasterSource(scene)])
    assert seen == [rep.rasters[0]["tiles_planned"]] and rep.notes[-1].startswith("removed 2 merged Ray job shard(s)")

    def broken(self, settled):
        raise RuntimeError("disk went away")

    monkeypatch.setattr(LocalExecutor, "remove_merged", broken, raising=False)
    rep = index_rasters(str(tmp_path / "idx2"), [RasterSource(scene)])
    assert rep.notes[-1] == "merged Ray job shards were not removed: disk went away"
    seen.clear()
    monkeypatch.setattr(LocalExecutor, "remove_merged", remove_merged, raising=False)
    with pytest.raises(Canceled):
        index_rasters(str(tmp_path / "idx3"), [RasterSource(scene)], is_canceled=lambda: True)
    assert seen == []
