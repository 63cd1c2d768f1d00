"""No caption is ever lost (issue 14), store side: tiling changes keep captions as cache, one writer
per index (two real processes, SIGKILL takeover), broken manifest rebuilt, read-only media, damaged
vectors, disk full, leftovers. Real SQLite, real hnswlib, real files and mounts."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from plugin.core.errors import DiskFullError, IndexBusyError, IndexStoreError
from plugin.core.store import ann, ann_files, index_lock
from plugin.core.store.store import SearchIndex
from plugin.core.store.store_check import check_index, prune_index
from tests.core.index_helpers import DIM, FakeInfo, grid_items, tile, unit, variants

ROOT = Path(__file__).resolve().parents[2]
A = FakeInfo("/data/a.tif", "ra", "a")


def _new(folder: str) -> SearchIndex:
    return SearchIndex.open(folder, create=True, embedder_fingerprint="e", dim=DIM)


def _max_caption_id(folder: str) -> int:
    with sqlite3.connect(os.path.join(folder, "index.sqlite")) as c:
        return int(c.execute("SELECT MAX(caption_id) FROM captions").fetchone()[0])


def test_other_tiling_keeps_captions_as_cache_until_pruned(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = str(tmp_path / "idx")
    plan_a = grid_items(A, rng, 3, 3, size=64)          # tiling A: 9 tiles of 64 px
    plan_b = [(tile(A, 0, 0, 192), variants("b", 3), unit(rng, 3))]  # tiling B: one 192 px tile
    with _new(folder) as idx:
        idx.upsert_raster(A, "c", {"tile_size": 64})
        idx.add_tiles("ra", "c", plan_a)
        # Switch to B: A's tiles leave search, their 27 captions stay.
        idx.upsert_raster(A, "c", {"tile_size": 192})
        idx.add_tiles("ra", "c", plan_b)
        assert idx.retain_tiles("ra", {plan_b[0][0].tile_id}) == 9
        st = idx.stats()
        assert (st["tiles"], st["cached_tiles"], st["variants"], st["embedded"]) == (1, 9, 30, 3)
        assert {h.tile_id for h in idx.search(plan_a[0][2][0], top=20)} == {plan_b[0][0].tile_id}
        assert idx.get_raster("ra")["tiles"] == 1
        ids_a = [r.tile_id for r, _, _ in plan_a]
        cache = idx.cached_variants(ids_a, "c")
        assert set(cache) == set(ids_a) and cache[ids_a[0]] == plan_a[0][1]
        before = _max_caption_id(folder)
        # Back to A: the cache is re-embedded in place (same caption ids), nothing captioned again.
        idx.add_tiles("ra", "c", [(r, cache[r.tile_id], v) for r, _, v in plan_a])
        idx.retain_tiles("ra", set(ids_a))
        assert _max_caption_id(folder) == before
        assert len(idx.search(plan_a[4][2][0], top=20)) == 9 and idx.search(plan_a[4][2][0])[0].tile_id == ids_a[4]
        # Removing the cache is explicit and says what it frees.
        assert prune_index(idx, dry_run=True) == {"tiles": 1, "captions": 3, "bytes": prune_index(idx, dry_run=True)["bytes"]}
        freed = prune_index(idx)
        assert freed["tiles"] == 1 and freed["captions"] == 3 and freed["bytes"] > 0
        assert idx.stats()["cached_tiles"] == 0 and idx.stats()["variants"] == 27


HOLDER = r"""
import sys, time
sys.path.insert(0, {root!r})
from plugin.core.store.store import SearchIndex
idx = SearchIndex.open(sys.argv[1], create=True, embedder_fingerprint="e", dim=16, job="index big.tif --tile-size 128")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
idx.close()
print("released", flush=True)
"""


def _holder(tmp_path: Path, folder: str, hold_s: float) -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), folder, str(hold_s)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
    return proc


def test_one_writer_per_index_and_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    folder = str(tmp_path / "idx")
    with _new(folder) as idx:
        idx.upsert_raster(A, "c", {})
        idx.add_tiles("ra", "c", grid_items(A, np.random.default_rng(1), 2, 2))
    proc = _holder(tmp_path, folder, 120)
    try:
        with pytest.raises(IndexBusyError) as err:
            SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM)
        msg = str(err.value)
        assert "index big.tif --tile-size 128" in msg and f"pid {proc.pid}" in msg and "\n" not in msg
        t0 = time.monotonic()
        with pytest.raises(IndexBusyError):
            SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM, wait_s=0.6)
        assert time.monotonic() - t0 >= 0.5, "it waited before refusing"
        with SearchIndex.open(folder, readonly=True) as r:  # readers never wait for the writer
            assert r.stats()["tiles"] == 4
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # The lock of a killed job never refuses forever: the next writer takes it over.
        with SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM) as idx:
            assert idx._lock is not None and idx._lock.took_over
            assert idx.stats()["tiles"] == 4
    finally:
        if proc.poll() is None:
            proc.kill()
    # A job that ends normally hands over to one that waits for it.
    proc = _holder(tmp_path, folder, 0.8)
    with SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM, wait_s=30) as idx:
        assert not idx._lock.took_over and proc.wait(10) == 0
    # Within one process the same rule holds.
    with _new(folder):
        with pytest.raises(IndexBusyError, match="another job is writing"):
            _new(folder)


def test_without_os_locks_a_dead_holder_is_taken_over(tmp_path: Path, monkeypatch) -> None:
    folder = str(tmp_path / "idx")
    os.makedirs(folder)

    def no_locks(fd: int) -> bool:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(index_lock, "_os_lock", no_locks)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        import socket

        lock_file = Path(folder, index_lock.LOCK_FILE)
        lock_file.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "job": "other job",
                                         "started": time.time(), "heartbeat": time.time()}))
        with pytest.raises(IndexBusyError, match="other job"):
            _new(folder)
        lock_file.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "job": "dead job",
                                         "started": time.time(), "heartbeat": time.time()}))
        with _new(folder) as idx:
            assert idx._lock.took_over
        assert json.loads(lock_file.read_text())["released"] is True
        with _new(folder) as idx:
            assert not idx._lock.took_over
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("damage", ["garbage", "empty_object", "deleted"])
def test_broken_manifest_is_rebuilt_from_the_database(tmp_path: Path, damage: str) -> None:
    folder = str(tmp_path / "idx")
    items = grid_items(A, np.random.default_rng(2), 3, 2)
    with _new(folder) as idx:
        idx.upsert_raster(A, "c", {})
        idx.add_tiles("ra", "c", items)
    manifest = Path(folder, "manifest.json")
    good = json.loads(manifest.read_text())
    broken = {"garbage": lambda: manifest.write_bytes(b"\x00{nope"), "empty_object": lambda: manifest.write_text("{}"),
     "deleted": manifest.unlink}
    broken[damage]()
    before = manifest.read_bytes() if manifest.exists() else None
    with SearchIndex.open(folder, readonly=True) as r:  # readers work from the database, write nothing
        assert len(r.search(items[3][2][0], top=10)) == 6
    assert (manifest.read_bytes() if manifest.exists() else None) == before
    with SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM) as idx:
        assert idx.stats()["variants"] == 18
        if damage != "deleted":
            assert any("rebuilt it from the database" in n for n in idx.notes)
    assert json.loads(manifest.read_text()) == good


@pytest.fixture()
def small_mount(tmp_path: Path):
    """A real tmpfs of 3 MB (needs root; skipped elsewhere)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _build_readable(folder: str) -> list:
    items = grid_items(A, np.random.default_rng(3), 4, 3)
    old = os.umask(0o022)
    try:
        with _new(folder) as idx:
            idx.upsert_raster(A, "c", {})
            idx.add_tiles("ra", "c", items)
            idx.set_raster_state("ra", "indexed")
    finally:
        os.umask(old)
    for name in ("manifest.json", "index.sqlite", "captions.hnsw", "captions.hnsw.json", "writer.lock"):
        assert Path(folder, name).stat().st_mode & 0o777 == 0o644, f"{name} follows the umask (teammates can read)"
    return items


def _search_read_only(folder: str, items: list, want: list) -> None:
    with SearchIndex.open(folder, readonly=True) as r:
        assert [h.tile_id for h in r.search(items[5][2][0], top=5)] == want
        assert r.stats()["tiles"] == 12
    assert check_index(folder)["ok"]
    with pytest.raises(IndexStoreError, match="read-only|cannot write|cannot be opened") as err:
        SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM)
    assert "\n" not in str(err.value)


def test_search_and_info_work_on_a_read_only_mount(tmp_path: Path, small_mount: Path) -> None:
    folder = str(small_mount / "idx")
    items = _build_readable(folder)
    with SearchIndex.open(folder, readonly=True) as r:
        want = [h.tile_id for h in r.search(items[5][2][0], top=5)]
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], capture_output=True).returncode == 0
    _search_read_only(folder, items, want)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_search_and_info_work_in_a_folder_this_user_cannot_write(tmp_path: Path) -> None:
    folder = str(tmp_path / "idx")
    items = _build_readable(folder)
    with SearchIndex.open(folder, readonly=True) as r:
        want = [h.tile_id for h in r.search(items[5][2][0], top=5)]
    names = os.listdir(folder)
    for name in names:  # what a teammate sees: 0644 files of another user, a folder they cannot write
        os.chmod(os.path.join(folder, name), 0o444 if os.path.isfile(os.path.join(folder, name)) else 0o555)
    os.chmod(folder, 0o555)
    try:
        _search_read_only(folder, items, want)
    finally:
        os.chmod(folder, 0o755)
        for name in names:
            os.chmod(os.path.join(folder, name), 0o755 if os.path.isdir(os.path.join(folder, name)) else 0o644)


def _vector_offset(folder: str, caption_id: int) -> tuple[int, bytes]:
    """Where caption `caption_id`'s vector bytes sit in the (checkpointed) database file."""
    with sqlite3.connect(os.path.join(folder, "index.sqlite")) as c:
        blob = c.execute("SELECT vector FROM embeddings WHERE caption_id = ?", (caption_id,)).fetchone()[0]
    data = Path(folder, "index.sqlite").read_bytes()
    assert data.count(blob) == 1
    return data.index(blob), blob


def test_damaged_vector_bytes_never_rank_and_are_reported(tmp_path: Path) -> None:
    folder = str(tmp_path / "idx")
    items = grid_items(A, np.random.default_rng(4), 4, 4)
    with _new(folder) as idx:
        idx.upsert_raster(A, "c", {})
        idx.add_tiles("ra", "c", items)
    q = items[9][2][0]
    off, blob = _vector_offset(folder, 5)
    with open(os.path.join(folder, "index.sqlite"), "r+b") as f:  # bit rot that integrity_check cannot see
        f.seek(off)
        f.write(np.full(DIM, 3.0e36, np.float32).tobytes())
    Path(folder, ann.HNSW_FILE).unlink()  # the search file is rebuilt from the damaged table
    with SearchIndex.open(folder, readonly=True) as r:
        hits = r.search(q, top=16)
        assert all(-1.001 <= h.score <= 1.001 for h in hits) and hits[0].tile_id == items[9][0].tile_id
        assert r.ann.bad == {5}
    for fusion in ("mean", "top2"):
        with SearchIndex.open(folder, readonly=True) as r:
            assert all(abs(h.score) <= 1.001 for h in r.search(q, top=16, fusion=fusion, raster_ids=["ra"]))
    rep = check_index(folder)
    assert rep["integrity"] == "ok" and rep["damaged_vectors"] == 1 and not rep["ok"]
    assert any("re-embed" in p for p in rep["problems"])


def test_disk_full_keeps_the_old_search_file_and_says_so(tmp_path: Path, small_mount: Path) -> None:
    folder = str(small_mount / "idx")
    rng = np.random.default_rng(5)
    with _new(folder) as idx:
        idx.upsert_raster(A, "c", {})
        idx.add_tiles("ra", "c", grid_items(A, rng, 10, 10))
    side = Path(folder, ann.SIDECAR_FILE).read_text()
    filler = small_mount / "filler"

    def fill(leave: int) -> None:
        st = os.statvfs(small_mount)
        filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))

    idx = _new(folder)
    idx.add_tiles("ra", "c", [(tile(A, 2000 + i * 64, 0), variants(f"x{i}", 3), unit(rng, 3)) for i in range(20)])
    fill(20_000)
    with pytest.raises(DiskFullError) as err:  # the search file does not fit
        idx.flush()
    msg = str(err.value)
    assert msg.startswith("disk full") and folder in msg and "MB more" in msg and "\n" not in msg
    assert Path(folder, ann.SIDECAR_FILE).read_text() == side, "the old file and its sidecar are untouched"
    assert not any(Path(folder, ".tmp").iterdir()), "no half-written copy left behind"
    with pytest.raises(DiskFullError):
        idx.close()
    filler.unlink()
    fill(0)
    with pytest.raises(DiskFullError, match="disk full.*MB free"):  # the database cannot grow either
        with _new(folder) as idx:
            idx.add_tiles("ra", "c", [(tile(A, 9000 + i * 64, 0), variants(f"y{i}", 3), unit(rng, 3)) for i in range(200)])
    filler.unlink()
    with _new(folder) as idx:
        assert idx.stats()["tiles"] == 120, "what was committed before the disk filled is all there"
        idx.flush()
    with SearchIndex.open(folder, readonly=True) as r:
        assert r.stats()["hnsw"]["state"] == "loaded" and len(r.search(unit(rng, 1)[0], top=500)) == 120


def test_saved_file_is_verified_before_it_replaces_the_old_one(tmp_path: Path) -> None:
    folder = str(tmp_path / "idx")
    with _new(folder) as idx:
        idx.upsert_raster(A, "c", {})
        idx.add_tiles("ra", "c", grid_items(A, np.random.default_rng(6), 5, 5))
        n = idx.ann.element_count
    path = Path(folder, ann.HNSW_FILE)
    assert ann_files.layout_problem(str(path), DIM, n) == ""
    short = tmp_path / "short.hnsw"
    data = path.read_bytes()
    for cut in (0, 50, len(data) // 2, len(data) - 3):
        short.write_bytes(data[:cut])
        assert ann_files.layout_problem(str(short), DIM, n), f"a file cut at {cut} bytes is caught"
    assert "elements" in ann_files.layout_problem(str(path), DIM, n + 1)


def test_leftover_temp_files_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    folder = str(tmp_path / "idx")
    with _new(folder):
        pass
    left = Path(folder, ".tmp", "captions-deadbeef.hnsw")
    left.write_bytes(b"\0" * 300_000)
    with SearchIndex.open(folder, readonly=True):
        assert left.exists(), "readers never touch the folder"
    with SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM) as idx:
        assert not left.exists() and any("0.3 MB" in n for n in idx.notes)


def test_a_writer_dropped_without_close_does_not_keep_the_index_locked(tmp_path: Path) -> None:
    import gc

    folder = str(tmp_path / "idx")
    idx = _new(folder)
    with pytest.raises(IndexBusyError):
        _new(folder)
    del idx
    gc.collect()
    with _new(folder) as again:
        assert not again._lock.took_over


def _installed_hnswlib() -> str:
    from importlib import metadata

    try:
        metadata.version("chroma-hnswlib")
        return "chroma-hnswlib"
    except metadata.PackageNotFoundError:
        return "hnswlib"


def test_every_hnswlib_layout_the_requirements_can_install_is_verified(tmp_path: Path) -> None:
    """The dev venv has upstream hnswlib, the engine the dialog builds has chroma-hnswlib (4 more bytes
    per element): a file from either passes, and either one cut short fails."""
    folder = str(tmp_path / "idx")
    with _new(folder) as idx:
        idx.upsert_raster(A, "c", {})
        idx.add_tiles("ra", "c", grid_items(A, np.random.default_rng(7), 6, 6))
        n = idx.ann.element_count
    path = Path(folder, ann.HNSW_FILE)
    data = path.read_bytes()
    assert ann_files.file_layout(str(path), DIM, n) == (_installed_hnswlib(), ""), "the library in this venv"
    size_per = int.from_bytes(data[24:32], "little")
    level0_end = 96 + n * size_per
    if _installed_hnswlib() == "hnswlib":  # the other library's file: the same graph with its norms block
        other = data[:level0_end] + np.ones(n, dtype="<f4").tobytes() + data[level0_end:]
    else:
        other = data[:level0_end] + data[level0_end + 4 * n:]
    assert len(other) - len(data) == (4 * n if _installed_hnswlib() == "hnswlib" else -4 * n)
    files = {"installed": data, "other": other}
    for name, blob in files.items():
        p = tmp_path / f"{name}.hnsw"
        p.write_bytes(blob)
        layout, why = ann_files.file_layout(str(p), DIM, n)
        assert why == "" and layout in ann_files.LAYOUTS, (name, why)
        for cut in (len(blob) - 1, len(blob) - 4, len(blob) - 4 * n + 2, level0_end + 3):
            p.write_bytes(blob[:cut])
            assert ann_files.layout_problem(str(p), DIM, n), f"{name} cut at {cut} of {len(blob)} bytes is caught"
        p.write_bytes(blob + b"\0\0\0\0")
        assert "extra" in ann_files.layout_problem(str(p), DIM, n), f"{name} with 4 stray bytes"
