"""The hnswlib file: rebuilt when missing / corrupt / stale, crash-safe under SIGKILL, readers beside a writer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from plugin.core.store import ann
from plugin.core.store.store import SearchIndex
from tests.core.index_helpers import DIM, FakeInfo, grid_items

ROOT = Path(__file__).resolve().parents[2]
A = FakeInfo("/data/a.tif", "ra", "a")


def _build(tmp_path: Path, cols: int = 6, rows: int = 5, seed: int = 0) -> tuple[str, list]:
    items = grid_items(A, np.random.default_rng(seed), cols, rows)
    with SearchIndex.open(str(tmp_path / "idx"), create=True, embedder_fingerprint="e", dim=DIM) as idx:
        idx.upsert_raster(A, "c", {})
        idx.add_tiles("ra", "c", items)
        idx.set_raster_state("ra", "indexed")
        return idx.folder, items


def _ranking(folder: str, q: np.ndarray, top: int = 10) -> list[tuple[str, float]]:
    with SearchIndex.open(folder, readonly=True) as r:
        return [(h.tile_id, round(h.score, 5)) for h in r.search(q, top=top)]


def _state(folder: str) -> dict:
    with SearchIndex.open(folder, readonly=True) as r:
        return r.stats()["hnsw"]


@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage", "flip_middle", "no_sidecar", "old_sidecar"])
def test_damaged_file_is_rebuilt(tmp_path: Path, damage: str) -> None:
    folder, items = _build(tmp_path)
    q = items[7][2][1]
    want = _ranking(folder, q)
    assert _state(folder)["state"] == "loaded"
    f, side = Path(folder, ann.HNSW_FILE), Path(folder, ann.SIDECAR_FILE)
    old_side = side.read_text()
    if damage == "delete":
        f.unlink()
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    elif damage == "garbage":
        f.write_bytes(os.urandom(4096))
    elif damage == "flip_middle":
        data = bytearray(f.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 64] = b"\xff" * 64
        st = f.stat()
        f.write_bytes(bytes(data))
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the CRC can tell
    elif damage == "no_sidecar":
        side.unlink()
    elif damage == "old_sidecar":
        with SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM) as idx:
            idx.add_tiles("ra", "c", grid_items(A, np.random.default_rng(9), 1, 1, size=7))
        side.write_text(old_side)  # a sidecar that belongs to the previous file
    st = _state(folder)
    assert st["state"].startswith("rebuilt"), st
    got = _ranking(folder, q)
    if damage != "old_sidecar":
        assert got == want
    # A writer repairs the file for good on its next flush.
    with SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM) as idx:
        idx.flush()
    assert _state(folder)["state"] == "loaded"
    assert json.loads(side.read_text())["elements"] >= len(items) * 3


def test_stale_file_is_reconciled_from_the_log(tmp_path: Path) -> None:
    folder, items = _build(tmp_path)
    saved = {n: Path(folder, n).read_bytes() for n in (ann.HNSW_FILE, ann.SIDECAR_FILE)}
    stats = [os.stat(Path(folder, n)) for n in saved]
    # Changes committed after the save, and then the process "dies" before flushing.
    with SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM) as idx:
        extra = grid_items(FakeInfo("/b.tif", "rb", "b"), np.random.default_rng(5), 2, 1)
        idx.upsert_raster(FakeInfo("/b.tif", "rb", "b"), "c", {})
        idx.add_tiles("rb", "c", extra)
        idx.retain_tiles("ra", {r.tile_id for r, _, _ in items[3:]})
        idx._mutated = False  # simulate the crash: no flush on close
    for (n, data), st in zip(saved.items(), stats):
        Path(folder, n).write_bytes(data)
        os.utime(Path(folder, n), ns=(st.st_atime_ns, st.st_mtime_ns))
    s = _state(folder)
    assert s["state"] == "replayed", s
    with SearchIndex.open(folder, readonly=True) as r:
        hits = r.search(extra[0][2][0], top=100)
        assert hits[0].tile_id == extra[0][0].tile_id
        ids = {h.tile_id for h in hits}
        assert len(hits) == len(items) - 3 + 2 and not ids & {r.tile_id for r, _, _ in items[:3]}


def test_query_ef_follows_the_size_rule_and_never_drops_below_k(tmp_path: Path) -> None:
    """hnswlib refuses ef < k; an explicit ef wins over the rule; the rule grows with the index."""
    assert ann.query_ef(500, 1_000, ef=100) == 500
    assert ann.query_ef(10, 1_000) == ann.EF_SEARCH
    assert ann.query_ef(500, 10**6, ef=3_000) == 3_000
    factors = []
    for limit, factor in ann.EF_RULE:
        size = int(min(limit, 10**8))
        assert ann.query_ef(500, size) == max(ann.EF_SEARCH, 500 * factor)
        factors.append(factor)
    assert factors == sorted(factors) and factors[0] >= 1
    rng = np.random.default_rng(3)
    idx = ann.AnnIndex(str(tmp_path), 16, "e")
    idx.index = idx._new(2_000)
    x = rng.standard_normal((2_000, 16)).astype(np.float32)
    idx.add(np.arange(2_000, dtype=np.int64), x / np.linalg.norm(x, axis=1, keepdims=True))
    for active in (2_000, 600_000, 2_000_000):  # the ef hnswlib runs with, as SearchIndex.search asks
        idx.active = active
        labels, _ = idx.query(x[0], 50)
        assert idx.index.ef == ann.query_ef(50, active) and len(labels) == 50


def test_default_ef_finds_the_exact_neighbours_of_clustered_vectors(tmp_path: Path) -> None:
    """Caption vectors lie near a low-dimensional manifold: the default rule must return the exact top 10."""
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((40, 8)) @ rng.standard_normal((8, 64))
    x = (centres[rng.integers(0, 40, 5_000)] + 0.3 * rng.standard_normal((5_000, 8)) @ rng.standard_normal((8, 64))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = ann.AnnIndex(str(tmp_path), 64, "e")
    idx.index = idx._new(len(x))
    idx.add(np.arange(len(x), dtype=np.int64), x)
    recall = []
    for q in x[rng.integers(0, len(x), 50)] + 0.05 * rng.standard_normal((50, 64)).astype(np.float32):
        q /= np.linalg.norm(q)
        labels, sims = idx.query(q, 10 * 5 * 10)  # top 10 x 5 variants x oversample 10, as search does
        exact = np.sort(x @ q)[::-1][:10]
        recall.append(np.mean(sims[:10] >= exact[-1] - 1e-6))
        assert np.all(np.diff(sims) <= 1e-6)  # best first
    assert np.mean(recall) >= 0.98


def test_growth_and_compaction(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    with SearchIndex.open(str(tmp_path / "idx"), create=True, embedder_fingerprint="e", dim=DIM) as idx:
        idx.upsert_raster(A, "c", {})
        items = grid_items(A, rng, 30, 20, k=2)  # 1200 labels > the initial 1024 capacity
        for i in range(0, len(items), 300):
            idx.add_tiles("ra", "c", items[i : i + 300])
            idx.flush()
        assert idx.ann.index.get_max_elements() >= 1200 and idx.stats()["hnsw"]["elements"] == 1200
        idx.retain_tiles("ra", {r.tile_id for r, _, _ in items[:200]})
        idx.flush()
        st = idx.stats()["hnsw"]
        assert st["elements"] == 400 and st["deleted"] == 0 and st["state"].startswith("rebuilt: compacting")
        assert len(idx.search(items[0][2][0], top=500)) == 200


WRITER = r"""
import sys, time
import numpy as np
sys.path.insert(0, {root!r})
from plugin.core.store.store import SearchIndex
from tests.core.index_helpers import DIM, FakeInfo, grid_items
folder, mode = sys.argv[1], sys.argv[2]
A = FakeInfo("/data/a.tif", "ra", "a")
items = grid_items(A, np.random.default_rng(42), 20, 10)   # 200 tiles x 3 variants, same every run
idx = SearchIndex.open(folder, create=True, embedder_fingerprint="e", dim=DIM)
idx.upsert_raster(A, "c", {{}})
done = idx.done_tile_ids("ra", "c")
todo = [it for it in items if it[0].tile_id not in done]
for i in range(0, len(todo), 5):
    idx.add_tiles("ra", "c", todo[i:i + 5])
    if i % 20 == 0:
        idx.flush()
    print("batch", flush=True)
    if mode == "slow":
        time.sleep(0.03)
idx.set_raster_state("ra", "indexed")
idx.close()
print("finished", flush=True)
"""


def _writer(tmp_path: Path, folder: str, mode: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(script), folder, mode], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_consistent(folder: str) -> int:
    with sqlite3.connect(os.path.join(folder, "index.sqlite")) as c:
        dup = c.execute("SELECT COUNT(*) FROM (SELECT tile_id, captioner_fp, variant_index, COUNT(*) n FROM captions"
                        " GROUP BY 1, 2, 3 HAVING n > 1)").fetchone()[0]
        partial = c.execute("SELECT COUNT(*) FROM (SELECT tile_id, COUNT(*) n FROM captions GROUP BY 1 HAVING n != 3)").fetchone()[0]
        tiles = c.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]
    assert dup == 0 and partial == 0, "whole tiles or nothing, never duplicates"
    with SearchIndex.open(folder, readonly=True) as r:
        hits = r.search(np.ones(DIM, np.float32), top=1000)
        assert len(hits) == len({h.tile_id for h in hits}) == tiles
        assert r.stats()["embedded"] == tiles * 3
    return tiles


def test_sigkill_mid_job_then_resume_without_duplicates(tmp_path: Path) -> None:
    folder = str(tmp_path / "idx")
    proc = _writer(tmp_path, folder, "slow")
    seen = 0
    while seen < 12:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        seen += line.startswith("batch")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _assert_consistent(folder)
    assert 60 <= partial < 200
    proc = _writer(tmp_path, folder, "fast")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.count("batch") <= (200 - partial) // 5 + 1, "the resumed job only did what was missing"
    assert _assert_consistent(folder) == 200
    assert _state(folder)["state"] == "loaded"


def test_reader_sees_commits_while_a_writer_runs(tmp_path: Path) -> None:
    folder = str(tmp_path / "idx")
    proc = _writer(tmp_path, folder, "slow")
    assert proc.stdout.readline().startswith("batch")
    counts = []
    with SearchIndex.open(folder, readonly=True) as reader:  # one long-lived reader...
        while proc.poll() is None:
            counts.append(len(reader.search(np.ones(DIM, np.float32), top=1000)))
            with SearchIndex.open(folder, readonly=True) as fresh:  # ...and readers opened mid-job
                assert len(fresh.search(np.ones(DIM, np.float32), top=1000)) >= counts[-1]
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        counts.append(len(reader.search(np.ones(DIM, np.float32), top=1000)))
    assert counts == sorted(counts) and counts[0] < 200 and counts[-1] == 200
    assert len(set(counts)) >= 3, "the reader saw the index grow"
    shutil.rmtree(folder)
