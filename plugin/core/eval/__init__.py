"""Evaluation harness: the RSITMD/RSICD image-text retrieval protocol (issue 4).

Modes: `full` (caption the images now), `captions-file` (score captions made elsewhere),
`captions-only` (reference captions stand in for generated ones: the text side alone) and the
zero-shot `clip` baseline. Heavy libraries are imported only inside the functions that need them.
"""

from .datasets import DatasetError, EvalDataset, load_dataset, load_karpathy, load_precomp
from .metrics import FUSIONS, RecallMetrics, fuse_variant_scores, recall_metrics
from .runner import EvalResult, VectorCache, captions_only_split, run_captions_only, run_with_variants

__all__ = [
    "DatasetError", "EvalDataset", "load_dataset", "load_karpathy", "load_precomp",
    "FUSIONS", "RecallMetrics", "fuse_variant_scores", "recall_metrics",
    "EvalResult", "VectorCache", "captions_only_split", "run_captions_only", "run_with_variants",
]
