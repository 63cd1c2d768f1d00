"""`python -m plugin eval ...`: the RSITMD/RSICD protocol from the command line.

Kept import-light (no torch, transformers or sentence-transformers at import time) because the
main CLI imports it to build its parser for every command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from .datasets import DatasetError

MODES = ("full", "captions-file", "captions-only", "clip")


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers like 1,2") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers like 1,2")
    return vals


def _fusions(text: str) -> list[str]:
    from .metrics import FUSIONS

    vals = list(FUSIONS) if text.strip() == "all" else [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in FUSIONS]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"fusion {text!r}: expected max, mean, top2 (comma-separated) or all")
    return vals


def _rankers(text: str) -> list[str]:
    from ..search.hybrid import RANKERS

    vals = list(RANKERS) if text.strip() == "all" else [v.strip() for v in text.split(",") if v.strip()]
    if not vals or any(v not in RANKERS for v in vals):
        raise argparse.ArgumentTypeError(f"ranker {text!r}: expected dense, lexical, hybrid (comma-separated) or all")
    return vals


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "semantic-imagery-search" / "eval"


def add_eval_parser(subparsers: Any) -> None:
    """Adds the `eval` sub-command to the engine's CLI."""
    p = subparsers.add_parser(
        "eval", help="image-text retrieval metrics (RSITMD/RSICD protocol)",
        description="Evaluate retrieval the way the RSITMD/RSICD literature does: R@1/5/10 both ways, mR.",
    )
    p.add_argument("--dataset", required=True,
                   help="Karpathy JSON (dataset_rsitmd.json...) or a precomp folder / <split>_caps.txt file")
    p.add_argument("--images", default=None, help="folder of the image files (full and clip modes)")
    p.add_argument("--split", default="test")
    p.add_argument("--mode", choices=MODES, default="captions-only")
    p.add_argument("--fusion", type=_fusions, default=["max"], help="max, mean, top2, comma-separated, or all")
    p.add_argument("--ranker", type=_rankers, default=["dense"],
                   help="dense (the paper), lexical (bm25), hybrid (both, as search() fuses them), comma-separated, or all")
    p.add_argument("--lexical-weight", type=float, default=None, help="hybrid: weight of the bm25 bonus (default: search's)")
    p.add_argument("--k", type=_int_list, default=[1],
                   help="captions-only: reference captions standing in as variants, e.g. 1,2")
    p.add_argument("--max-variants", type=_int_list, default=None,
                   help="full / captions-file: also score the first K variants of each image, e.g. 1,3,5")
    p.add_argument("--captions-file", default=None, help="captions-file mode: JSONL, one record per image")
    p.add_argument("--captioner", default="spectral", help="full mode: spectral, transformers:MODEL, openai:URL#MODEL")
    p.add_argument("--preset", default="rsrt")
    p.add_argument("--variants", type=int, default=None, help="full mode: caption variants per image")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--embedder", default=None, help="sentence-transformers model or folder (default: packaged MiniLM)")
    p.add_argument("--clip-model", default=None, help="clip mode: CLIP/SigLIP folder or cached hub id")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None, help=f"captions and vectors cache (default {default_cache_dir()})")
    p.add_argument("--out", default=None, help="write <OUT>.json and <OUT>.md (default eval-results/<set>-<split>-<mode>)")
    p.add_argument("--no-files", action="store_true", help="terminal output only")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def _progress(quiet: bool):
    def report(done: int, total: int, message: str) -> None:
        if not quiet:
            print(f"\r{message}: {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    return report


def evaluate(args: argparse.Namespace) -> list:
    """Runs the configured evaluation and returns its EvalResults (the CLI's work without printing)."""
    from .datasets import load_dataset
    from .runner import VectorCache, run_captions_only, run_with_variants

    ds = load_dataset(args.dataset, args.split, args.images)
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    progress = _progress(getattr(args, "quiet", False))
    if args.mode == "clip":
        from .clip_baseline import run_clip

        if not args.clip_model:
            raise DatasetError("clip mode needs --clip-model (a CLIP/SigLIP folder or cached hub id)")
        return [run_clip(ds, args.clip_model, args.device, progress)]

    from ..embedding.embedder import make_embedder

    vectors = VectorCache(make_embedder(args.embedder, device=args.device), cache_dir)
    if args.mode == "captions-only":
        return run_captions_only(ds, vectors, args.k, args.fusion, args.ranker, args.lexical_weight)
    base: dict[str, Any] = {}
    if args.mode == "captions-file":
        from .captioning import read_captions_file

        if not args.captions_file:
            raise DatasetError("captions-file mode needs --captions-file (JSONL, one record per image)")
        variants = read_captions_file(args.captions_file)
        base["captions_file"] = str(args.captions_file)
    else:
        from ..captioners import make_captioner
        from .captioning import caption_dataset

        opts: dict[str, Any] = {"variants": args.variants, "preset": args.preset, "device": args.device,
                                "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens}
        captioner = make_captioner(args.captioner, **opts)
        cache = cache_dir / f"captions-{ds.name}-{ds.split}.jsonl"
        variants = caption_dataset(ds, captioner, cache, args.batch_size, progress)
        base.update(captioner=captioner.fingerprint, captioner_spec=args.captioner, preset=args.preset,
                    captioner_variants=args.variants, captions_cache=str(cache))
    out = []
    for kmax in args.max_variants or [None]:
        out += run_with_variants(ds, variants, vectors, args.fusion, kmax, mode=args.mode, config=base,
                                 rankers=args.ranker, lexical_weight=args.lexical_weight)
    return out


def run(args: argparse.Namespace) -> int:
    """The `eval` sub-command: evaluate, print the table (or JSON), write the report files."""
    from .report import format_table, results_document, write_reports

    results = evaluate(args)
    if args.format == "json":
        print(json.dumps(results_document(results), indent=2, ensure_ascii=False))
    else:
        print(format_table(results))
    if not args.no_files:
        ds = results[0].dataset
        prefix = args.out or os.path.join("eval-results", f"{ds['name']}-{ds['split']}-{args.mode}")
        j, m = write_reports(results, prefix)
        print(f"wrote {j} and {m}", file=sys.stderr)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Standalone entry (`python -m plugin.core.eval.cli`) until / besides the main CLI."""
    from ..errors import EngineError

    parser = argparse.ArgumentParser(prog="eval")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
