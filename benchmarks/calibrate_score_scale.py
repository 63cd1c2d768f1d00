"""Calibrate the fixed score scale of an embedder (issue 10 item 2): how high is a cosine that means
"this matches" and how high can an unrelated pair score?

Data: the RSITMD / RSICD test captions in `../shared/data/captions` (never copied into the project).
Every image has 5 reference captions and a class in its file name (airport_12.tif). Two kinds of query:
  - short: the class name as an analyst would type it ("storage tanks", "dense residential"),
  - sentence: another reference caption of the same image (the captions-only proxy's query).
Matching pairs: query vs captions of images of that class (short) / the same image (sentence).
Unrelated pairs: query vs captions of images of other classes.
Both sides go through the project's embedder (`make_embedder`: query prompt for the query, document
prompt for the caption), exactly as search does.

Prints percentiles and the thresholds the plugin uses (`plugin/core/search/score_scale.py`):
  weak   = 95th percentile of unrelated short-query scores (below: indistinguishable from unrelated),
  strong = median of matching short-query scores (above: as good as a typical true match),
  low/high of the colour ramp = median unrelated / 90th percentile matching.

    .venv/bin/python benchmarks/calibrate_score_scale.py [--captions ../shared/data/captions] [--embedder SPEC]
        [--document-graph fp32|int8]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

#: compound class names of RSITMD / RSICD written as words, as a user would type them
WORDS = {
    "bareland": "bare land", "baseballfield": "baseball field", "denseresidential": "dense residential area",
    "mediumresidential": "medium residential area", "sparseresidential": "sparse residential area",
    "railwaystation": "railway station", "storagetanks": "storage tanks", "center": "city center",
}


def load(folder: str, name: str) -> tuple[list[str], list[str], list[str]]:
    with open(os.path.join(folder, f"{name}_test_caps.txt"), encoding="utf-8") as f:
        caps = [ln.strip() for ln in f]
    with open(os.path.join(folder, f"{name}_test_filename.txt"), encoding="utf-8") as f:
        files = [ln.strip() for ln in f]
    classes = [re.sub(r"_\d+\.\w+$", "", fn) if "_" in fn else "" for fn in files]
    return caps, files, classes


def pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", default=os.path.join(ROOT, "..", "shared", "data", "captions"))
    ap.add_argument("--embedder", default=None, help="sentence-transformers spec (default: the packaged MiniLM)")
    ap.add_argument("--sets", default="rsitmd,rsicd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--document-graph", default="fp32", choices=("fp32", "int8"),
                    help="graph the captions are embedded with (int8: what a new CPU index uses); queries always fp32")
    args = ap.parse_args(argv)
    from plugin.core.embedding.embedder import make_embedder

    emb = make_embedder(args.embedder, device="cpu", document_graph=args.document_graph)
    assert emb.document_graph == args.document_graph, "the int8 graph needs the ONNX export (see the log)"
    print(f"embedder {emb.fingerprint}, {emb.document_graph} document graph")
    rng = np.random.default_rng(args.seed)
    short_match, short_other, sent_match, sent_other = [], [], [], []
    t0 = time.perf_counter()
    for name in args.sets.split(","):
        caps, files, classes = load(args.captions, name)
        docs = emb.encode_documents(caps)
        cls = np.array(classes)
        # short queries: one per class present with a class name
        names = sorted({c for c in classes if c})
        if names:
            q = emb.encode_queries([WORDS.get(c, c) for c in names])
            sims = q @ docs.T  # (classes, captions)
            for i, c in enumerate(names):
                short_match.append(sims[i, cls == c])
                short_other.append(sims[i, (cls != c) & (cls != "")])
        # sentence queries: caption k of an image vs caption 0 of the same image / of other-class images
        first: dict[str, int] = {}
        for i, fn in enumerate(files):
            first.setdefault(fn, i)
        qi = [i for i, fn in enumerate(files) if first[fn] != i]
        qi = list(rng.choice(qi, size=min(1500, len(qi)), replace=False))
        qv = emb.encode_queries([caps[i] for i in qi])
        heads = np.array(sorted(first.values()))
        s = qv @ docs[heads].T
        for row, i in enumerate(qi):
            same = heads == first[files[i]]
            other = (cls[heads] != classes[i]) if classes[i] else ~same
            sent_match.append(s[row, same])
            sent_other.append(s[row, other])
    sm, so = np.concatenate(short_match), np.concatenate(short_other)
    tm, to = np.concatenate(sent_match), np.concatenate(sent_other)
    secs = time.perf_counter() - t0
    print(f"pairs: short {sm.size} matching / {so.size} unrelated; sentence {tm.size} / {to.size}; {secs:.1f} s")
    print("percentile        5     25     50     75     90     95     99")
    for label, a in (("short match", sm), ("short other", so), ("sent. match", tm), ("sent. other", to)):
        print(f"{label:12s} " + " ".join(f"{pct(a, q):6.3f}" for q in (5, 25, 50, 75, 90, 95, 99)))
    weak, strong = pct(so, 95), pct(sm, 50)
    low, high = pct(so, 50), pct(sm, 90)
    # how well the weak threshold separates: share of true matches above it, of unrelated below it
    print(f"weak (p95 unrelated)   = {weak:.3f}: {100 * float((sm >= weak).mean()):.0f}% of matches above it")
    print(f"strong (p50 matching)  = {strong:.3f}: {100 * float((so >= strong).mean()):.2f}% of unrelated above it")
    print(f"ramp low (p50 unrelated) = {low:.3f}, ramp high (p90 matching) = {high:.3f}")
    print(f"ScoreScale(low={low:.2f}, weak={weak:.2f}, strong={strong:.2f}, high={high:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
