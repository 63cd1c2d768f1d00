"""How long `python -m plugin` takes to exit once a job is canceled, with the models loaded.

The interpreter's final garbage collections over torch/transformers' object graph dominated a
Ctrl-C's exit (the "canceled" line is printed within ~0.1 s of the signal). `plugin/__main__.py`
calls gc.freeze() before exiting. This script loads the default embedder in two fresh processes,
then exits with and without gc.freeze(), and prints both exit times and their ratio (baseline =
without, measured in the same run).

    .venv/bin/python benchmarks/cancel_exit_time.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = """
import gc, sys
sys.path.insert(0, {root!r})
from plugin.core.search.searcher import cached_embedder
cached_embedder(None, "cpu").encode_documents(["warm up"])
print("ready", flush=True)
sys.stdin.readline()
if {freeze}:
    gc.freeze()
"""


def exit_seconds(freeze: bool) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    p = subprocess.Popen([sys.executable, "-c", CHILD.format(root=ROOT, freeze=freeze)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    p.stdin.write("\n")
    p.stdin.flush()
    p.wait()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    plain = [exit_seconds(False) for _ in range(a.repeat)]
    frozen = [exit_seconds(True) for _ in range(a.repeat)]
    mp, mf = statistics.median(plain), statistics.median(frozen)
    print(f"exit after the embedder loaded: plain {mp:.2f} s, gc.freeze() {mf:.2f} s (median of {a.repeat}); "
          f"ratio {mp / mf:.1f}x faster")


if __name__ == "__main__":
    main()
