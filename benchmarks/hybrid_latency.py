"""Hybrid vs dense query latency on one real index (SQLite + FTS5 + hnsw file), measured in the same run.

The index holds `--n` caption variants (5 per tile): texts are caption-like passages over a
vocabulary of land-cover words (embedding_throughput.caption_texts) plus one object word drawn
from a Zipf-like list, so query words have realistic document frequencies (some in half the
captions, some in a few); vectors scatter around the real MiniLM embedding of their own text.
Each query is run dense and hybrid alternately (same query vector; the embedding is computed once
and not timed: it is the same for both). Prints p50 / p95 and the ratio hybrid / dense
(target <= 1.2), and the FTS5 part alone.

    .venv/bin/python benchmarks/hybrid_latency.py --n 1000000
    .venv/bin/python benchmarks/hybrid_latency.py --n 100000 --queries 100   # quick
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OBJECTS = ["storage tanks", "runway", "tennis court", "helipad", "roundabout", "swimming pool", "pier", "greenhouses",
           "solar panels", "wind turbines", "baseball field", "stadium", "railway", "bridge", "dam", "quarry",
           "vineyard", "orchard", "container terminal", "parking lot", "church", "cemetery", "golf course", "marina"]
QUERIES = ["storage tanks near a harbour", "airport runway", "tennis court in a residential area", "helipad",
           "sandy beach next to the sea", "dense forest", "farmland with rectangular fields", "solar panels on bare soil",
           "wind turbines in fields", "a quarry", "river crossing a city", "a marina with boats", "greenhouses",
           "roundabout", "railway bridge over a river", "golf course", "swimming pool", "the image shows a stadium",
           "parking lot next to a church", "orchard and vineyard"]


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, p))


def reference_sentences(folder: Path) -> list[list[str]]:
    """The RSITMD + RSICD test captions, five sentences per image (read in place, never copied)."""
    out = []
    for name in ("rsitmd_test_caps.txt", "rsicd_test_caps.txt"):
        lines = [" ".join(x.replace(" .", ".").split()) for x in (folder / name).read_text().splitlines()]
        lines = [x[:1].upper() + x[1:] for x in lines]
        out += [lines[i : i + 5] for i in range(0, len(lines) - 4, 5)]
    return out


def base_texts(captions: Optional[Path], bases: int, variants: int) -> tuple[list[str], list[str], int]:
    """(distinct variant texts, query texts, variants per base group).

    With the reference captions: one group per image, its variant k = sentences k, k+1, k+2 of the
    image (so word frequencies are those of real remote-sensing captions); queries are other
    single reference sentences plus the hand-written QUERIES. Without them: synthetic passages
    (embedding_throughput.caption_texts) plus one Zipf-drawn object word, one text per group."""
    if captions is not None and (captions / "rsicd_test_caps.txt").exists():
        imgs = reference_sentences(captions)
        texts = [" ".join(s[(k + j) % 5] for j in range(3)) for s in imgs for k in range(variants)]
        rng = np.random.default_rng(3)
        sample = [imgs[i][int(rng.integers(0, 5))] for i in rng.integers(0, len(imgs), 200)]
        queries = [q for pair in zip(sample, QUERIES * 10) for q in pair]
        return texts, queries, variants
    from embedding_throughput import caption_texts

    rng = np.random.default_rng(0)
    zipf = 1.0 / np.arange(1, len(OBJECTS) + 1)
    zipf /= zipf.sum()
    obj = rng.choice(len(OBJECTS), bases, p=zipf)
    texts = [f"{t} There is a {OBJECTS[o]} in the north." for t, o in zip(caption_texts(bases, seed=7), obj)]
    return texts, list(QUERIES), 1


def build(folder: str, emb, n: int, variants: int, base_txt: list[str], group: int) -> None:
    """Fill a real index through SearchIndex.add_tiles (the indexer's write path: rows, FTS5 triggers,
    ann log), then flush (hnsw build + save). Each tile draws one base group; variant k gets the
    group's text k (or the group's only text), and a vector scattered around that text's real
    MiniLM embedding (search_latency.caption_like: cosine ~0.86 to it), not the embedding of itself
    (embedding 1M captions takes an hour on 2 cores and changes nothing in the timing)."""
    from plugin.core.store.store import SearchIndex
    from plugin.core.types import CaptionVariant, PixelWindow, TileRef

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    base = emb.encode_documents(base_txt)
    n_groups = len(base_txt) // group
    print(f"embedded {len(base_txt):,} distinct variant texts in {time.perf_counter() - t0:.0f} s", flush=True)

    class Info:
        path, raster_id, name, crs_wkt = "/bench/scene.tif", "bench", "scene", None

        def to_dict(self) -> dict:
            return {"path": self.path, "raster_id": self.raster_id, "name": self.name, "crs_wkt": None}

    n_tiles = n // variants
    side = int(np.ceil(np.sqrt(n_tiles)))
    t0 = time.perf_counter()
    with SearchIndex.open(folder, create=True, embedder_fingerprint=emb.fingerprint, dim=emb.dim) as idx:
        idx.upsert_raster(Info(), "bench-captioner", {})
        for b in range(0, n_tiles, 2000):
            m = min(b + 2000, n_tiles) - b
            grp = rng.integers(0, n_groups, m)
            which = (grp[:, None] * group + (np.arange(variants)[None, :] % group)).reshape(-1)
            v = base[which] + 0.6 * rng.standard_normal((m * variants, emb.dim), dtype=np.float32) / np.sqrt(emb.dim)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            items = []
            for j in range(m):
                t = b + j
                c, r = (t % side) * 64, (t // side) * 64
                ring = ((c, r), (c + 64, r), (c + 64, r + 64), (c, r + 64), (c, r))
                ref = TileRef(f"t{t:07d}", "bench", PixelWindow(c, r, 64, 64), 1, ring)
                vs = [CaptionVariant(base_txt[which[j * variants + k]], "", "") for k in range(variants)]
                items.append((ref, vs, v[j * variants : (j + 1) * variants]))
            idx.add_tiles("bench", "bench-captioner", items)
            if (b // 2000) % 20 == 0:
                print(f"   {b + m:,} tiles ({time.perf_counter() - t0:.0f} s)", flush=True)
        t_db = time.perf_counter() - t0
        idx.flush()
    print(f"built {n_tiles:,} tiles x {variants} = {n_tiles * variants:,} variants: rows + FTS5 {t_db:.0f} s, "
          f"with hnsw {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="caption variants in the index")
    ap.add_argument("--variants", type=int, default=5)
    ap.add_argument("--bases", type=int, default=2000, help="synthetic texts only: distinct caption texts")
    ap.add_argument("--captions", default=str(ROOT.parent / "shared" / "data" / "captions"),
                    help="reference captions folder (word frequencies of real captions); synthetic texts when absent")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--build-only", action="store_true", help="build the --keep folder and stop (measure later)")
    ap.add_argument("--keep", default=None, help="build into / reuse this folder instead of a temporary one")
    args = ap.parse_args()
    from plugin.core.embedding.embedder import make_embedder
    from plugin.core.search.hybrid import LEXICAL_TERM_CAP
    from plugin.core.store.lexical import lexical_top, matched_terms, matched_terms_in, query_terms
    from plugin.core.store.store import SearchIndex

    emb = make_embedder(None)
    print(f"embedder {emb.fingerprint} on {emb.device}; cores {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    folder = args.keep or tempfile.mkdtemp(prefix="hybrid-bench-")
    base_txt, query_pool, group = base_texts(Path(args.captions) if args.captions else None, args.bases, args.variants)
    print(f"caption texts: {'reference captions' if group > 1 else 'synthetic'} ({len(base_txt):,} distinct variant texts)")
    if not os.path.exists(os.path.join(folder, "manifest.json")):
        build(folder, emb, args.n, args.variants, base_txt, group)
    if args.build_only:
        return
    texts = [query_pool[i % len(query_pool)] for i in range(args.queries)]
    qv = emb.encode_queries(texts)
    with SearchIndex.open(folder, embedder_fingerprint=emb.fingerprint, dim=emb.dim) as idx:
        t0 = time.perf_counter()
        idx.search(qv[0], top=args.top, ranker="dense")
        print(f"index open + first search (hnsw load): {time.perf_counter() - t0:.1f} s; {idx.active_count():,} variants")
        for i in range(5):  # warm both paths (page cache, FTS5 structures)
            idx.search(qv[i], top=args.top, ranker="hybrid", query_text=texts[i])
        dense, hybrid, fts, same, why_old, why_new = [], [], [], [], [], []
        for i, (q, text) in enumerate(zip(qv, texts)):
            runs = [("dense", dense), ("hybrid", hybrid)]
            for ranker, out in (runs if i % 2 == 0 else runs[::-1]):
                t0 = time.perf_counter()
                hits = idx.search(q, top=args.top, ranker=ranker, query_text=text)
                out.append(time.perf_counter() - t0)
                if ranker == "dense":
                    d_ids = [h.tile_id for h in hits]
                else:
                    h_ids = [h.tile_id for h in hits]
                    h_hits = hits
            same.append(len(set(d_ids) & set(h_ids)) / args.top)
            k = args.top * args.variants * 2
            t0 = time.perf_counter()
            lexical_top(idx.conn, query_terms(text), k, term_cap=LEXICAL_TERM_CAP)
            fts.append(time.perf_counter() - t0)
            # "why it matched" for the hybrid hits: per hit on the index (the first version) vs one
            # scratch FTS5 table of the hits' texts (shipped); not part of the timings above
            terms = query_terms(text)
            cids = [int(r[0]) for h in h_hits for r in idx.conn.execute(
                "SELECT caption_id FROM captions WHERE tile_id = ? AND variant_index = ?", (h.tile_id, h.variant_index))]
            t0 = time.perf_counter()
            for c in cids:
                matched_terms(idx.conn, c, terms)
            why_old.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            matched_terms_in({i: h.caption for i, h in enumerate(h_hits)}, terms)
            why_new.append(time.perf_counter() - t0)
        from plugin.core.store.lexical import selective_terms

        n_terms = n_sel = n_q_sel = 0
        for text in sorted(set(texts)):  # not timed: what the lexical side had to work with
            terms = query_terms(text)
            sel = selective_terms(idx.conn, terms, LEXICAL_TERM_CAP)
            n_terms, n_sel, n_q_sel = n_terms + len(terms), n_sel + len(sel), n_q_sel + bool(sel)
    print(f"dense  search: p50 {pct(dense, 50):.1f} ms  p95 {pct(dense, 95):.1f} ms")
    print(f"hybrid search: p50 {pct(hybrid, 50):.1f} ms  p95 {pct(hybrid, 95):.1f} ms")
    print(f"   FTS5 bm25 top-{args.top * args.variants * 2} (selective words) alone: p50 {pct(fts, 50):.1f} ms  p95 {pct(fts, 95):.1f} ms")
    print(f"ratio hybrid / dense: p50 {pct(hybrid, 50) / pct(dense, 50):.2f}  p95 {pct(hybrid, 95) / pct(dense, 95):.2f}"
          f" (target <= 1.2); top-{args.top} overlap dense vs hybrid {np.mean(same):.2f}")
    print(f"   matched words of the {args.top} hybrid hits: per hit on the index p50 {pct(why_old, 50):.1f} ms p95 "
          f"{pct(why_old, 95):.1f} ms (first version) | scratch table of their texts p50 {pct(why_new, 50):.1f} ms "
          f"p95 {pct(why_new, 95):.1f} ms (shipped)")
    print(f"query words scored by bm25 (in <= {LEXICAL_TERM_CAP:,} captions): {n_sel} of {n_terms}; distinct queries"
          f" with at least one: {n_q_sel} of {len(set(texts))}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
