"""SearchIndex: the SQLite truth, incremental add/remove, caption cache, embedder switch, errors."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from plugin.core.errors import EngineError, IndexStoreError
from plugin.core.store.store import SearchIndex
from tests.core.index_helpers import DIM, FakeInfo, grid_items, unit, variants

A = FakeInfo("/data/a.tif", "ra", "a")
B = FakeInfo("/data/b.tif", "rb", "b")


def _count(folder: str, sql: str) -> int:
    with sqlite3.connect(os.path.join(folder, "index.sqlite")) as c:
        return int(c.execute(sql).fetchone()[0])


def _new(tmp_path: Path, fp: str = "emb1") -> SearchIndex:
    return SearchIndex.open(str(tmp_path / "idx"), create=True, embedder_fingerprint=fp, dim=DIM)


def test_layout_manifest_and_wal(tmp_path: Path) -> None:
    with _new(tmp_path) as idx:
        folder = idx.folder
        assert idx.dim == DIM and idx.embedder_fingerprint == "emb1"
        idx.upsert_raster(A, "capA", {"tile_size": 64})
        idx.add_tiles("ra", "capA", grid_items(A, np.random.default_rng(0), 2, 2))
    m = json.loads(Path(folder, "manifest.json").read_text())
    assert m["schema_version"] == SearchIndex.SCHEMA_VERSION and m["embedder_fingerprint"] == "emb1"
    assert m["dim"] == DIM and m["metric"] == "cosine"
    assert Path(folder, "captions.hnsw").exists() and Path(folder, "captions.hnsw.json").exists()
    with sqlite3.connect(os.path.join(folder, "index.sqlite")) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # A reader opened without a fingerprint takes the manifest's.
    with SearchIndex.open(folder, readonly=True) as r:
        assert r.embedder_fingerprint == "emb1" and r.stats()["tiles"] == 4


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(IndexStoreError, match="no index at"):
        SearchIndex.open(str(tmp_path / "missing"))
    with pytest.raises(IndexStoreError, match="no index at"):
        SearchIndex.open(str(tmp_path / "missing"), readonly=True, create=True)
    with pytest.raises(IndexStoreError, match="fingerprint"):
        SearchIndex.open(str(tmp_path / "x"), create=True)
    with _new(tmp_path) as idx:
        folder = idx.folder
        idx.upsert_raster(A, "capA", {})
        items = grid_items(A, np.random.default_rng(0), 1, 1)
        ref, vs, _ = items[0]
        with pytest.raises(IndexStoreError, match=r"expected \(3, 16\)"):
            idx.add_tiles("ra", "capA", [(ref, vs, np.ones((3, DIM + 1), np.float32))])
        with pytest.raises(IndexStoreError, match="NaN"):
            idx.add_tiles("ra", "capA", [(ref, vs, np.full((3, DIM), np.nan, np.float32))])
        with pytest.raises(IndexStoreError, match="upsert_raster"):
            idx.add_tiles("nope", "capA", [])
        with pytest.raises(IndexStoreError, match="captioner capA, not capB"):
            idx.add_tiles("ra", "capB", items)
        with pytest.raises(IndexStoreError, match="state"):
            idx.set_raster_state("ra", "done")
        idx.add_tiles("ra", "capA", items)
        with pytest.raises(IndexStoreError, match="query vector has 7 dimensions"):
            idx.search(np.ones(7))
    with pytest.raises(IndexStoreError, match="built with embedder emb1, not emb2"):
        SearchIndex.open(folder, embedder_fingerprint="emb2", dim=DIM)
    with pytest.raises(IndexStoreError, match="16-d"):
        SearchIndex.open(folder, embedder_fingerprint="emb1", dim=32)
    with SearchIndex.open(folder, readonly=True) as r:
        with pytest.raises(IndexStoreError, match="read-only"):
            r.set_raster_state("ra", "indexed")
    assert issubclass(IndexStoreError, EngineError)


def test_damaged_database_or_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with _new(tmp_path) as idx:
        folder = idx.folder
    Path(folder, "index.sqlite").write_bytes(b"this is not sqlite" * 100)
    for name in ("index.sqlite-wal", "index.sqlite-shm"):
        Path(folder, name).unlink(missing_ok=True)
    with pytest.raises(IndexStoreError, match="cannot be opened"):
        SearchIndex.open(folder, readonly=True)
    Path(folder, "manifest.json").write_text("{nope")
    with pytest.raises(IndexStoreError, match="damaged|repair") as err:
        SearchIndex.open(folder)
    assert "delete" not in str(err.value), "never advise deleting an index"


def test_incremental_add_remove_and_no_duplicates(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with _new(tmp_path) as idx:
        folder = idx.folder
        idx.upsert_raster(A, "capA", {})
        items_a = grid_items(A, rng, 4, 3)
        idx.add_tiles("ra", "capA", items_a)
        idx.set_raster_state("ra", "indexed")
        assert idx.done_tile_ids("ra", "capA") == {r.tile_id for r, _, _ in items_a}
        idx.upsert_raster(B, "capA", {})
        items_b = grid_items(B, rng, 2, 2, k=5)
        idx.add_tiles("rb", "capA", items_b)
        idx.set_raster_state("rb", "indexed")
        # Re-adding the same tiles (a resumed job) replaces in place: same caption ids, no new rows.
        before = _count(folder, "SELECT MAX(caption_id) FROM captions")
        idx.add_tiles("ra", "capA", items_a[:5])
        assert _count(folder, "SELECT MAX(caption_id) FROM captions") == before
        # Fewer variants on re-add drops the extra ones.
        ref, vs, vec = items_b[0]
        idx.add_tiles("rb", "capA", [(ref, vs[:2], vec[:2])])
        s = idx.stats()
        assert (s["rasters"], s["tiles"], s["variants"], s["embedded"]) == (2, 16, 12 * 3 + 3 * 5 + 2, 12 * 3 + 17)
        hits = idx.search(vec[0], top=100)
        assert len(hits) == 16 and len({h.tile_id for h in hits}) == 16
        assert hits[0].tile_id == ref.tile_id and hits[0].score == pytest.approx(1.0, abs=1e-5)
        rows = {r["raster_id"]: r for r in idx.raster_rows()}
        assert rows["rb"]["tiles"] == 4 and rows["rb"]["variants"] == 17 and rows["ra"]["state"] == "indexed"
        assert rows["ra"]["band_map"]["red"] == 1 and rows["ra"]["captioner_fp"] == "capA"
        assert idx.find_raster_ids("/data/b.tif") == ["rb"] == idx.find_raster_ids("b")
        assert idx.get_raster("zz") is None and idx.get_raster("ra")["path"] == "/data/a.tif"
        idx.remove_raster("ra")
        hits = idx.search(vec[0], top=100)
        assert {h.raster_id for h in hits} == {"rb"} and len(hits) == 4
    assert _count(folder, "SELECT COUNT(*) FROM captions") == 17, "captions of the removed raster are gone"
    with SearchIndex.open(folder, readonly=True) as r:
        st = r.stats()
        assert st["embedded"] == 17 and st["hnsw"]["deleted"] == 0, "the flushed file was compacted"
        assert len(r.search(vec[0], top=100)) == 4


def test_retain_tiles_drops_unplanned(tmp_path: Path) -> None:
    with _new(tmp_path) as idx:
        idx.upsert_raster(A, "capA", {})
        items = grid_items(A, np.random.default_rng(2), 3, 3)
        idx.add_tiles("ra", "capA", items)
        keep = {r.tile_id for r, _, _ in items[:4]}
        assert idx.retain_tiles("ra", keep) == 5
        assert idx.done_tile_ids("ra", "capA") == keep
        assert {h.tile_id for h in idx.search(items[8][2][0], top=50)} == keep
        assert idx.stats()["embedded"] == 12


def test_captioner_switch_keeps_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with _new(tmp_path) as idx:
        idx.upsert_raster(A, "capA", {})
        items = grid_items(A, rng, 3, 2, tag="A ")
        idx.add_tiles("ra", "capA", items)
        ids = {r.tile_id for r, _, _ in items}
        # Captioner B: A's captions stop being searchable, stay cached.
        idx.upsert_raster(A, "capB", {})
        assert idx.done_tile_ids("ra", "capB") == set() and idx.search(items[0][2][0], top=5) == []
        cache = idx.cached_variants(ids, "capA")
        assert set(cache) == ids and cache[items[0][0].tile_id] == items[0][1]
        assert idx.cached_variants(ids, "capB") == {}
        items_b = [(ref, variants(ref.tile_id, 2, "B "), unit(rng, 2)) for ref, _, _ in items]
        idx.add_tiles("ra", "capB", items_b)
        hits = idx.search(items_b[0][2][0], top=50)
        assert len(hits) == 6 and all(h.caption.startswith("B ") for h in hits)
        # Back to A: nothing to caption (cache), only re-embedding; B's captions now cached.
        idx.upsert_raster(A, "capA", {})
        assert idx.done_tile_ids("ra", "capA") == set()
        back = idx.cached_variants(ids, "capA")
        idx.add_tiles("ra", "capA", [(ref, back[ref.tile_id], vec) for ref, _, vec in items])
        hits = idx.search(items[0][2][0], top=50)
        assert len(hits) == 6 and all(h.caption.startswith("A ") for h in hits)
        assert set(idx.cached_variants(ids, "capB")) == ids
        assert idx.stats()["variants"] == 6 * 3 + 6 * 2


def test_embedder_switch_reembeds_without_recaptioning(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    with _new(tmp_path) as idx:
        folder = idx.folder
        idx.upsert_raster(A, "capA", {})
        items = grid_items(A, rng, 2, 2)
        idx.add_tiles("ra", "capA", items)
        idx.set_raster_state("ra", "indexed")
    new_dim = 24
    with SearchIndex.open(folder, embedder_fingerprint="emb2", dim=new_dim, allow_new_embedder=True) as idx:
        assert idx.embedder_fingerprint == "emb2" and idx.dim == new_dim
        st = idx.stats()
        assert st["embedded"] == 0 and st["variants"] == 12 and st["stale_rasters"] == ["ra"]
        assert idx.search(unit(rng, 1, new_dim)[0]) == []
        ids = [r.tile_id for r, _, _ in items]
        cache = idx.cached_variants(ids, "capA")
        assert len(cache) == 4 and idx.done_tile_ids("ra", "capA") == set()
        vecs = unit(rng, 12, new_dim)
        idx.upsert_raster(A, "capA", {})
        idx.add_tiles("ra", "capA", [(r, cache[r.tile_id], vecs[i * 3:(i + 1) * 3]) for i, (r, _, _) in enumerate(items)])
        assert idx.search(vecs[4])[0].tile_id == items[1][0].tile_id
    m = json.loads(Path(folder, "manifest.json").read_text())
    assert (m["embedder_fingerprint"], m["dim"]) == ("emb2", new_dim)
    with SearchIndex.open(folder, embedder_fingerprint="emb2", dim=new_dim) as idx:
        assert idx.stats()["hnsw"]["state"] == "loaded" and len(idx.search(vecs[0], top=10)) == 4
