"""The FTS5 lexical index stays in step with the embeddings: add, re-caption, retain, captioner and
embedder switches, removal, SIGKILL mid-job, and the migration of an index made before it existed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

from plugin.core.store.lexical import (
    LEXICAL_TABLE,
    lexical_top,
    matched_terms,
    matched_terms_in,
    query_terms,
    selective_terms,
)
from plugin.core.store.store import SearchIndex
from plugin.core.types import CaptionVariant
from tests.core.index_helpers import DIM, FakeInfo, tile, unit

ROOT = Path(__file__).resolve().parents[2]
A = FakeInfo("/data/a.tif", "ra", "a")
B = FakeInfo("/data/b.tif", "rb", "b", x0=500000.0, y0=4200000.0)
WORDS = ["runway", "harbour", "forest", "beach", "tanks", "vineyard", "quarry", "marsh"]


def _items(info: FakeInfo, rng: np.random.Generator, n: int, k: int = 3, word_of=lambda i: WORDS[i % len(WORDS)]):
    out = []
    for i in range(n):
        ref = tile(info, (i % 10) * 64, (i // 10) * 64)
        vs = [CaptionVariant(f"The image shows a {word_of(i)} tile {i}", f"feature {v}", f"caption {v}") for v in range(k)]
        out.append((ref, vs, unit(rng, k)))
    return out


def _in_step(folder: str) -> int:
    """FTS rows == searchable captions (ids and texts), and FTS5's own integrity check passes."""
    with sqlite3.connect(os.path.join(folder, "index.sqlite")) as c:
        emb = {r[0] for r in c.execute("SELECT caption_id FROM embeddings")}
        lex = dict(c.execute(f"SELECT rowid, text FROM {LEXICAL_TABLE}").fetchall())
        assert set(lex) == emb, f"{len(set(lex) - emb)} FTS rows without embedding, {len(emb - set(lex))} missing"
        for cid, a, b, t in c.execute("SELECT caption_id, one_sentence, feature, caption FROM captions"):
            if cid in emb:
                assert lex[cid].split() == f"{a} {b} {t}".split()
        c.execute(f"INSERT INTO {LEXICAL_TABLE} ({LEXICAL_TABLE}) VALUES ('integrity-check')")
    return len(emb)


def test_query_terms_drop_boilerplate_and_stop_words() -> None:
    assert query_terms("The image shows two white storage tanks near the harbour") == ["two", "white", "storage", "tanks", "harbour"]
    assert query_terms("an aerial view of a runway, the runway's lights") == ["runway", "lights"]
    assert query_terms('"quoted" OR NOT near') == ["quoted"]  # FTS5 operators are never read as operators


def test_fts_follows_every_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    folder = str(tmp_path / "idx")
    with SearchIndex.open(folder, create=True, embedder_fingerprint="e", dim=DIM) as idx:
        idx.upsert_raster(A, "c1", {})
        idx.upsert_raster(B, "c1", {})
        idx.add_tiles("ra", "c1", _items(A, rng, 30))
        idx.add_tiles("rb", "c1", _items(B, rng, 10))
        assert _in_step(folder) == 120
        ids, scores = lexical_top(idx.conn, ["quarry"], 100)
        assert len(ids) == 4 * 3 and np.all(np.diff(scores) <= 0) and scores[0] > 0
        # re-caption in place: same caption ids, new words; one variant fewer for tile 0
        recap = [(ref, [CaptionVariant("a helipad on a roof", "x", "y")] * 2, unit(rng, 2))
                 for ref, _v, _e in _items(A, rng, 1)]
        idx.add_tiles("ra", "c1", recap)
        assert _in_step(folder) == 119
        hit = lexical_top(idx.conn, ["helipads"], 10)[0]  # plural folded on both sides
        assert len(hit) == 2
        assert matched_terms(idx.conn, int(hit[0]), ["helipads", "roof"]) == ["helipad", "roof"]
        assert idx.retain_tiles("ra", {ref.tile_id for ref, _v, _e in _items(A, rng, 20)}) == 10
        assert _in_step(folder) == 89
        idx.upsert_raster(B, "c2", {})  # another captioner: B's captions stay as cache, unsearchable
        assert _in_step(folder) == 59
        assert len(lexical_top(idx.conn, ["tile"], 1000)[0]) == 59 - 2  # the re-captioned tile has no "tile"
        idx.remove_raster("ra")
        assert _in_step(folder) == 0
        idx.add_tiles("rb", "c2", _items(B, rng, 4))
        assert _in_step(folder) == 12
    with SearchIndex.open(folder, embedder_fingerprint="e2", dim=DIM, allow_new_embedder=True) as idx:
        assert _in_step(folder) == 0  # a new embedder drops every embedding, and so every FTS row
        idx.add_tiles("rb", "c2", _items(B, rng, 4))
    assert _in_step(folder) == 12


def test_migration_builds_the_table_for_an_older_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    folder = str(tmp_path / "idx")
    with SearchIndex.open(folder, create=True, embedder_fingerprint="e", dim=DIM) as idx:
        idx.upsert_raster(A, "c1", {})
        idx.add_tiles("ra", "c1", _items(A, rng, 20, word_of=lambda i: "beach" if i == 7 else "forest"))
    with sqlite3.connect(os.path.join(folder, "index.sqlite")) as c:  # what an index of the previous release holds
        for t in ("lex_emb_ins", "lex_emb_upd", "lex_emb_del", "lex_cap_upd"):
            c.execute(f"DROP TRIGGER {t}")
        c.execute(f"DROP TABLE {LEXICAL_TABLE}")
        c.execute("DELETE FROM meta WHERE key = 'lexical_version'")
    with SearchIndex.open(folder, readonly=True) as ro:  # read-only: no migration, hybrid is dense alone
        q = unit(rng, 1)[0]
        assert [h.tile_id for h in ro.search(q, ranker="hybrid", query_text="beach")] == \
               [h.tile_id for h in ro.search(q, ranker="dense")]
    with SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM) as idx:
        assert _in_step(folder) == 60
        hits = idx.search(unit(rng, 1)[0], ranker="lexical", query_text="beaches", top=3)
        assert [h.tile_id for h in hits] == [tile(A, 7 * 64, 0).tile_id]
        assert hits[0].extra["matched_terms"] == ["beach"]
    with SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM):
        pass  # a second open finds the table current and leaves it alone
    assert _in_step(folder) == 60


WRITER = """
import sys, time
sys.path.insert(0, {root!r})
import numpy as np
from plugin.core.store.store import SearchIndex
from tests.core.test_lexical import A, _items
rng = np.random.default_rng(1)
idx = SearchIndex.open(sys.argv[1], create=True, embedder_fingerprint="e", dim=16)
idx.upsert_raster(A, "c1", {{}})
items = _items(A, rng, 400)
for i in range(0, 400, 4):
    idx.add_tiles("ra", "c1", items[i : i + 4])
    if i % 40 == 0:
        idx.retain_tiles("ra", {{ref.tile_id for ref, _v, _e in items[: i + 4]}} - {{items[i // 2][0].tile_id}})
    print("batch", flush=True)
    time.sleep(0.01)
"""


def test_sigkill_mid_job_leaves_fts_in_step(tmp_path: Path) -> None:
    folder = str(tmp_path / "idx")
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=str(ROOT)))
    proc = subprocess.Popen([sys.executable, str(script), folder], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = 0
    while seen < 25:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        seen += line.startswith("batch")
    assert proc.poll() is None, "the writer finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n = _in_step(folder)
    assert 0 < n < 1200
    with SearchIndex.open(folder, embedder_fingerprint="e", dim=DIM) as idx:
        want = {r[0] for r in idx.conn.execute("SELECT c.caption_id FROM captions c JOIN embeddings e"
                                                " ON e.caption_id = c.caption_id WHERE c.one_sentence LIKE '%runway%'")}
        assert want and set(lexical_top(idx.conn, ["runways"], 10_000)[0].tolist()) == want
    assert _in_step(folder) == n


def test_common_words_are_left_to_the_dense_score(tmp_path: Path) -> None:
    """With a term cap, a word more captions hold than the cap is not scored (bounded FTS5 cost)."""
    rng = np.random.default_rng(9)
    folder = str(tmp_path / "idx")
    with SearchIndex.open(folder, create=True, embedder_fingerprint="e", dim=DIM) as idx:
        idx.upsert_raster(A, "c1", {})
        idx.add_tiles("ra", "c1", _items(A, rng, 40, k=1))  # "tile" in all 40 captions, "quarry" in 5
        assert selective_terms(idx.conn, ["tile", "quarry", "nowhere"], 10) == ["quarry", "nowhere"]
        ids, _s = lexical_top(idx.conn, ["tile", "quarry"], 100, term_cap=10)
        assert len(ids) == 5  # only the quarry captions: "tile" was left out
        assert len(lexical_top(idx.conn, ["tile", "quarry"], 100)[0]) == 40


def test_matched_words_of_hits_are_those_of_the_index(tmp_path: Path) -> None:
    """search() reads the hits' matched words off a scratch FTS5 table of their texts (a rowid MATCH on a
    1M-caption index costs ~1-2 ms per hit): the same words, as written, as the index's own highlight."""
    rng = np.random.default_rng(5)
    folder = str(tmp_path / "idx")
    texts = ["Two white storage tanks beside a barn.", "A runway and a taxiway; planes on the runways.",
             "Helipads on the roof", "Dense forest", "Parking lots and a parked truck"]
    with SearchIndex.open(folder, create=True, embedder_fingerprint="e", dim=DIM) as idx:
        idx.upsert_raster(A, "c", {})
        idx.add_tiles("ra", "c", [(tile(A, i * 64, 0), [CaptionVariant(t, "", "")], unit(rng, 1)) for i, t in enumerate(texts)])
        ids = dict(idx.conn.execute("SELECT caption_id, one_sentence FROM captions"))
        for query in ("storage tank", "runway planes", "helipad roofs", "parking", "vineyard"):
            terms = query_terms(query)
            fast = matched_terms_in(ids, terms)
            assert fast == {cid: matched_terms(idx.conn, cid, terms) for cid in ids}
    assert fast == {cid: [] for cid in ids}  # nothing holds "vineyard"
    assert matched_terms_in({7: "Planes on the runways"}, ["runway"]) == {7: ["runways"]}
    assert matched_terms_in({}, ["runway"]) == {} and matched_terms_in({1: "x"}, []) == {1: []}
