"""Terminal table, Markdown and JSON for evaluation results.

The files carry the full configuration (dataset, split, fingerprints, variants, fusion, k) next to
every number, so a result can be reproduced or compared with one made months later.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Sequence, Union

from .runner import EvalResult

COLUMNS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "mR", "t2i_mean", "i2t_mean")
HEADERS = ("T2I R@1", "R@5", "R@10", "I2T R@1", "R@5", "R@10", "mR (6-way)", "T2I mean", "I2T mean")
LEGEND = (
    "T2I: each query caption ranks all images (hit: its image in the top K). "
    "I2T: each image ranks all query captions (hit: any of its captions in the top K). "
    "mR = mean of the six recalls (the field's standard); T2I/I2T mean = per-direction means "
    "(what the paper's code reports). Ties (scores rounded to 6 decimals): lower gallery index first."
)


def _setting(r: EvalResult) -> str:
    c = r.config
    parts = [r.dataset.get("name", "?"), r.mode]
    if "k" in c:
        parts.append(f"k={c['k']}")
    elif c.get("variants_per_image") not in (None, "all"):
        parts.append(f"K={c['variants_per_image']}")
    if r.mode != "clip":
        parts.append(str(c.get("fusion", "")))
    if c.get("ranker"):
        parts.append(str(c["ranker"]) + (f" w={c['lexical_weight']:g}" if "lexical_weight" in c else ""))
    return " ".join(p for p in parts if p)


def _rows(results: Sequence[EvalResult]) -> list[list[str]]:
    rows = []
    for r in results:
        m = r.metrics.to_dict()
        rows.append([_setting(r)] + [f"{m[c]:.2f}" for c in COLUMNS]
                    + [str(m["gallery_images"]), str(m["query_captions"])])
    return rows


def format_table(results: Sequence[EvalResult]) -> str:
    """A fixed-width table for the terminal."""
    head = ["setting", *HEADERS, "images", "queries"]
    rows = _rows(results)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(cells, widths))
    )
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    return "\n".join(lines)


def to_markdown(results: Sequence[EvalResult], title: str = "Retrieval evaluation") -> str:
    head = ["setting", *HEADERS, "images", "queries"]
    out = [f"# {title}", "", LEGEND, "",
           "| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in _rows(results)]
    out += ["", "## Configuration", ""]
    for r in results:
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(r.config.items()))
        ds = r.dataset
        out.append(f"- **{_setting(r)}**: dataset {ds.get('name')} split {ds.get('split')} ({ds.get('layout')}, "
                   f"{ds.get('source')}); {cfg}; seconds {r.seconds}")
    return "\n".join(out) + "\n"


def results_document(results: Sequence[EvalResult]) -> dict[str, Any]:
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "legend": LEGEND,
        "results": [r.to_dict() for r in results],
    }


def write_reports(results: Sequence[EvalResult], out_prefix: Union[str, Path]) -> tuple[Path, Path]:
    """`<prefix>.json` and `<prefix>.md`; returns both paths."""
    prefix = Path(out_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    j = prefix.with_name(prefix.name + ".json")
    m = prefix.with_name(prefix.name + ".md")
    j.write_text(json.dumps(results_document(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    m.write_text(to_markdown(results), encoding="utf-8")
    return j, m
