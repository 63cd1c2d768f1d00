"""Corruption in index.sqlite (issue 14): damaged pages and damaged vector bytes in a real index file,
one-line errors from the CLI, `info --check`, and `repair` / the next update re-embedding from the
captions without re-captioning."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plugin.core.indexing import index_info, index_rasters
from plugin.core.rasters.tiling import TilingParams
from plugin.core.search.searcher import Searcher
from plugin.core.store import ann
from plugin.core.store.store_check import check_index
from plugin.core.types import RasterSource
from tests.core.test_pipeline import FAST, write_scene

ROOT = Path(__file__).resolve().parents[2]
T64 = TilingParams(tile_size=64)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "plugin", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def _build(tmp_path: Path) -> tuple[str, str]:
    scene = write_scene(tmp_path / "s.tif")
    idx = str(tmp_path / "idx")
    index_rasters(idx, [RasterSource(scene)], tiling=T64, captioner_options=FAST)
    assert not Path(idx, "index.sqlite-wal").exists() or Path(idx, "index.sqlite-wal").stat().st_size == 0
    return scene, idx


def _offset_of(idx: str, blob: bytes, unique: bool = True) -> int:
    data = Path(idx, "index.sqlite").read_bytes()
    assert data.count(blob) == 1 if unique else data.count(blob) >= 1
    return data.index(blob)


def _ranking(idx: str) -> list[tuple[str, float]]:
    with Searcher(idx) as s:
        return [(h.tile_id, round(h.score, 5)) for h in s.search("open water of the sea", top=9)]


@pytest.mark.slow
def test_damaged_page_gives_one_line_errors_and_repair_recaptions_nothing(tmp_path: Path) -> None:
    scene, idx = _build(tmp_path)
    db = os.path.join(idx, "index.sqlite")
    with sqlite3.connect(db) as c:
        page = c.execute("PRAGMA page_size").fetchone()[0]
        text = c.execute("SELECT caption FROM captions WHERE caption_id = 7").fetchone()[0]
    off = _offset_of(idx, text.encode(), unique=False)  # sea tiles share their caption text
    with open(db, "r+b") as f:  # one page of the captions table turns to garbage
        f.seek(off // page * page)
        f.write(np.random.default_rng(0).integers(0, 256, page, dtype=np.uint8).tobytes())
    for args in (("info", "--index", idx), ("info", "--index", idx, "--check"),
                 ("search", "--index", idx, "--top", "9", "sea"),
                 ("index", "--index", idx, "--tile-size", "64", "--variants", "2", "--quiet", scene)):
        r = _cli(*args)
        assert "Traceback" not in r.stderr, (args, r.stderr)
        if r.returncode and r.stderr.strip():
            last = r.stderr.strip().splitlines()[-1]
            assert last.startswith("error:") and "repair" in last and "delete" not in last, (args, last)
        elif r.returncode:  # info --check: the report names the problems and the next step
            assert "problem:" in r.stdout and "repair" in r.stdout, (args, r.stdout)
    check = _cli("info", "--index", idx, "--check")
    assert check.returncode == 1 and "problem:" in check.stdout and "repair" in check.stdout, check.stdout + check.stderr
    r = _cli("repair", "--index", idx, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "nothing re-captioned" in r.stdout and "damaged database is kept" in r.stdout
    assert any(p.name.startswith("damaged-") and (p / "index.sqlite").exists() for p in Path(idx).iterdir())
    assert _cli("info", "--index", idx, "--check").returncode == 0
    with sqlite3.connect(db) as c:
        lost = c.execute("SELECT COUNT(*) FROM tiles t WHERE NOT EXISTS (SELECT 1 FROM captions c"
                         " WHERE c.tile_id = t.tile_id)").fetchone()[0]
        salvaged = c.execute("SELECT COUNT(*) FROM captions").fetchone()[0]
    assert 0 < salvaged < 18 and lost < 9
    rep = index_rasters(idx, [RasterSource(scene)], tiling=T64, captioner_options=FAST).rasters[0]
    assert rep["tiles_new"] == lost, "only tiles whose captions were all unreadable are captioned again"
    assert index_info(idx)["tiles"] == 9 and check_index(idx)["ok"]
    assert len(_ranking(idx)) == 9


def test_damaged_vector_bytes_are_reembedded_by_the_next_update(tmp_path: Path) -> None:
    scene, idx = _build(tmp_path)
    want = _ranking(idx)
    with sqlite3.connect(os.path.join(idx, "index.sqlite")) as c:
        blob = c.execute("SELECT vector FROM embeddings WHERE caption_id = 3").fetchone()[0]
    off = _offset_of(idx, blob, unique=False)  # identical captions share identical vectors: damage the first
    with open(os.path.join(idx, "index.sqlite"), "r+b") as f:
        f.seek(off + 64)
        f.write(np.full(8, 1.0e37, np.float32).tobytes())
    Path(idx, ann.HNSW_FILE).unlink()
    assert all(abs(s) <= 1.001 for _, s in _ranking(idx)), "a damaged vector never ranks with an absurd score"
    n = check_index(idx)["damaged_vectors"]
    assert n == 1
    r = _cli("info", "--index", idx, "--check")
    assert r.returncode == 1 and "1 stored vector(s) are damaged" in r.stdout
    rep = index_rasters(idx, [RasterSource(scene)], tiling=T64, captioner_options=FAST)
    assert rep.reembedded_damaged == 1 and rep.rasters[0]["tiles_new"] == 0
    assert check_index(idx)["ok"] and _ranking(idx) == want
