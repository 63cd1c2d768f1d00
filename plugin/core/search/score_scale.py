"""A fixed meaning for scores, per embedder: what counts as no match, a weak one, a strong one.

Why fixed: colours rescaled to each query's own range painted "airport runway" (best 0.16, no airport
in the scene) in the same reds as "sandy beach" at 0.63. Cosines of one embedder are comparable across
queries, so one scale per embedder says how good a match is. The numbers come from data, not from
taste: `benchmarks/calibrate_score_scale.py` scores short class-name queries ("storage tanks") against
reference captions of the RSITMD and RSICD test sets (matching = captions of that class, unrelated =
captions of the other classes) and takes
    weak   = 95th percentile of unrelated scores (below it a tile is indistinguishable from unrelated),
    strong = median of matching scores,
    low / high = median unrelated / 90th percentile matching (the ends of the colour ramp).
Results and the command are in benchmarks/RESULTS.md. Embedders without a calibration use the MiniLM
numbers and say so (`calibrated=False`). Plain Python: used by the dock, Processing and the engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

#: Five classes, low to high: no confident match, weak, fair, strong, very strong.
CLASS_NAMES = ("no confident match", "weak", "fair", "strong", "very strong")
#: Their colours (grey, then a yellow-to-red ramp); the score surface uses the same ramp.
CLASS_COLORS = ("#bdbdbd", "#fecc5c", "#fd8d3c", "#f03b20", "#bd0026")


@dataclass(frozen=True)
class ScoreScale:
    embedder: str
    low: float
    weak: float
    strong: float
    high: float
    calibrated: bool = True

    def breaks(self) -> tuple[float, float, float, float]:
        """Upper bounds of the first four classes (the fifth is open)."""
        return (self.weak, (self.weak + self.strong) / 2.0, self.strong, self.high)

    def class_index(self, score: float) -> int:
        for i, b in enumerate(self.breaks()):
            if score < b:
                return i
        return len(CLASS_NAMES) - 1

    def label(self, score: float) -> str:
        return CLASS_NAMES[self.class_index(score)]

    def confident(self, score: float) -> bool:
        return score >= self.weak

    def verdict(self, best: float, bonus: float = 0.0) -> str:
        """One line about a query's best match, plain about a miss. `best` is its cosine (what the scale
        means); `bonus` the hybrid ranker's word bonus on that hit, said apart so the line agrees with the
        Score column (cosine + bonus) without letting the bonus make a match look confident."""
        if not self.confident(best):
            words = f" without the +{bonus:.2f} for the query's words" if bonus > 0 else ""
            return (f"no confident match: best score {best:.2f}{words} "
                    f"(below {self.weak:.2f}, what unrelated text reaches)")
        if bonus > 0:
            return (f"best score {best + bonus:.2f} (similarity {best:.2f} + {bonus:.2f} for the query's words): "
                    f"{self.label(best)} match")
        return f"best score {best:.2f}: {self.label(best)} match"

    def ranges(self) -> list[tuple[float, float, str, str]]:
        """(lower, upper, label, colour) per class, spanning 0..1 (cosines of normalised vectors)."""
        edges = (-1.0, *self.breaks(), 1.0)
        out = []
        for i, name in enumerate(CLASS_NAMES):
            lo, hi = edges[i], edges[i + 1]
            text = f"{name} (< {hi:.2f})" if i == 0 else (f"{name} (≥ {lo:.2f})" if i == len(CLASS_NAMES) - 1
                                                          else f"{name} ({lo:.2f} – {hi:.2f})")
            out.append((lo, hi, text, CLASS_COLORS[i]))
        return out


def match_strength(score: float, extra: Optional[Mapping[str, Any]] = None) -> float:
    """The part of a hit's score the scale was calibrated on: its cosine. Hybrid ranking adds a
    lexical bonus (up to 0.15) for caption words the query names; it orders hits but says nothing
    about how close the meaning is, so verdicts and colours leave it out."""
    bonus = (extra or {}).get("lexical_bonus", 0.0) or 0.0
    try:
        return float(score) - float(bonus)
    except (TypeError, ValueError):
        return float(score)


#: Calibrated scales by embedder display name (see the module docstring for how).
#: all-MiniLM-L6-v2: 7,395 matching / 218,975 unrelated short-query pairs (2026-11-30).
CALIBRATED = {
    "all-MiniLM-L6-v2": ScoreScale("all-MiniLM-L6-v2", low=0.13, weak=0.33, strong=0.49, high=0.66),
}
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def embedder_name(fingerprint_or_spec: str | None) -> str:
    """"st:all-MiniLM-L6-v2@1229...:dim=384" or a folder path -> "all-MiniLM-L6-v2"; empty -> the default."""
    text = str(fingerprint_or_spec or "").strip()
    if not text:
        return DEFAULT_EMBEDDER
    text = text.split("@")[0]
    if text.startswith(("st:", "hf:")):
        text = text.split(":", 1)[1]
    return os.path.basename(text.rstrip("/\\")) or text


def scale_for(fingerprint_or_spec: str | None) -> ScoreScale:
    """The embedder's calibrated scale, else MiniLM's marked `calibrated=False`."""
    name = embedder_name(fingerprint_or_spec)
    if name in CALIBRATED:
        return CALIBRATED[name]
    base = CALIBRATED[DEFAULT_EMBEDDER]
    return ScoreScale(name, base.low, base.weak, base.strong, base.high, calibrated=False)
