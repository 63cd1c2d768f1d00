"""`python -m plugin index|search|info|remove|eval|worker`: the engine without QGIS.

Errors users can fix print one line and exit 1; Ctrl-C cancels cleanly (what was committed stays)
and exits 130. Progress goes to stderr so `--format json` output can be piped. `index` exits 3 when
it finished but some tiles (or some of several rasters) failed, in every format, so a script can tell
"all done" (0) from "done, retry the failures" (3) from "did not finish" (1); argparse's usage errors exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Iterator, Optional, Sequence

from .cli_args import (
    add_executor_args,
    captioner_options,
    executor_options,
    parse_bands,
    parse_bbox,
    parse_option,
    parse_overlap,
    parse_scales,
    parse_seconds,
)
from .errors import Canceled, EngineError

EXIT_ERROR = 1
#: `index` finished, but tiles or rasters failed (their reasons are in the report; the next run retries them).
EXIT_FAILED_TILES = 3
EXIT_CANCELED = 130

INDEX_EXIT_STATUS = """exit status:
  0    every planned tile is indexed (captioned, from the cache, or empty and skipped)
  1    error: the run did not finish (one line on stderr says why); what it committed is kept
  2    usage error (a bad option)
  3    finished, but some tiles or rasters failed: their reasons are in the report
       (FAILED lines, or tiles_failed/failed_tiles/error in --format json); run again to retry them
  130  canceled (Ctrl-C): what was indexed so far is kept"""


class _Bar:
    """A tqdm progress bar on stderr, driven by the engine's progress(done, total, message)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total or None, unit="tile", file=sys.stderr, dynamic_ncols=True)
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.set_description_str(message[:60], refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_index(args: argparse.Namespace) -> int:
    from .index_request import IndexRequest
    from .indexing.commit import failure_line
    from .rasters.raster_folders import expand_sources, remove_written
    from .rasters.tiling import TilingParams
    from .report_lines import raster_notes

    tiling = TilingParams(
        tile_size=args.tile_size, tile_size_units=args.tile_size_units, overlap=args.overlap,
        scales=args.scales, out_size=args.out_size,
    )
    opts = captioner_options(args)
    existed = os.path.exists(args.index)
    sources, written = expand_sources(args.rasters, args.index, args.bands)
    bar = _Bar(args.quiet)
    try:
        request = IndexRequest(
            args.index, tuple(sources), captioner=args.captioner, embedder=args.embedder, tiling=tiling.to_dict(),
            captioner_options=opts, device=args.device, remove_missing=args.remove_missing, force=args.force,
            wait_s=args.wait, executor=args.executor, executor_options=executor_options(args) or {},
            document_graph=args.document_graph,
        )
        # Ctrl-C interrupts between commits; the store keeps what was committed (main() says so).
        with _stdout_to_stderr(args.executor != "local"):  # Ray and its workers print; stdout is for results
            report = request.run(progress=bar)
    except BaseException:
        if not os.path.exists(os.path.join(args.index, "manifest.json")):  # no index yet: leave nothing behind
            remove_written(written, args.index)
            if not existed:
                try:
                    os.rmdir(args.index)
                except OSError:
                    pass
        raise
    finally:
        bar.close()
    status = index_exit_status(report.rasters)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
        return status
    for note in report.notes:
        print(f"  note: {note}")
    for r in report.rasters:
        if "error" in r:
            print(f"  FAILED  {r['name']}: {r['error']}")
            continue
        print(
            f"  {r['name']}: {r['tiles_planned']} tiles planned, {r['tiles_new']} captioned, "
            f"{r['tiles_cached']} from cache, {r['tiles_empty']} empty skipped, {r['variants']} variants added"
            + (f", {r['tiles_failed']} FAILED" if r.get("tiles_failed") else "")
        )
        if r.get("tiles_failed"):
            print(f"    {failure_line(r)}")
        for line in raster_notes(r):
            print(f"    {line}")
    if report.reembedded_damaged:
        print(f"  re-embedded {report.reembedded_damaged} damaged vector(s) from their captions")
    if report.removed:
        print(f"  removed {len(report.removed)} raster(s) no longer listed")
    print(f"indexed into {args.index} in {report.seconds:.1f} s (captioner {report.captioner}, "
          f"{report.document_graph} document graph)")
    return status


def index_exit_status(rasters: Sequence[dict[str, Any]]) -> int:
    """0, or EXIT_FAILED_TILES when a raster could not be opened or some of its tiles failed."""
    return EXIT_FAILED_TILES if any("error" in r or r.get("tiles_failed") for r in rasters) else 0


@contextlib.contextmanager
def _stdout_to_stderr(active: bool) -> Iterator[None]:
    """Point fd 1 at stderr for the duration (processes started meanwhile inherit it)."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _hits_geojson(hits: list[Any]) -> dict[str, Any]:
    feats = []
    for h in hits:
        props = {k: v for k, v in h.to_dict().items() if k not in ("footprint",)}
        feats.append({"type": "Feature", "geometry": h.footprint, "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def cmd_search(args: argparse.Namespace) -> int:
    from .search.searcher import Searcher

    if bool(args.query) == bool(args.like):
        raise EngineError("search needs a query or --like RASTER:COL,ROW[,SCALE], not both")
    with Searcher(args.index, embedder=args.embedder, device=args.device) as s:
        hits = s.search(
            " ".join(args.query), top=args.top, fusion=args.fusion, rasters=args.raster, bbox=args.bbox,
            bbox_crs=args.bbox_crs, min_score=args.min_score, suppress_overlaps=args.suppress_overlaps,
            ranker=args.ranker, like=args.like,
        )
    if args.format == "json":
        print(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
    elif args.format == "geojson":
        print(json.dumps(_hits_geojson(hits), ensure_ascii=False))
    else:
        if not hits:
            print("no hits")
        for h in hits:
            w = h.window
            print(f"{h.rank:>3}  {h.score:.3f}  {h.raster_name or os.path.basename(h.raster)}  "
                  f"x{h.scale} [{w.col_off},{w.row_off} {w.width}x{w.height}]")
            print(f"     {h.caption[:160]}")
            why = [f"matched: {', '.join(h.extra['matched_terms'])}"] if h.extra.get("matched_terms") else []
            if h.extra.get("demoted_by"):
                why.append(f"demoted: looks like {h.extra['demoted_by']!r} ({h.extra['negative_score']:.2f})")
            if why:
                print(f"     [{'; '.join(why)}]")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .indexing import index_info

    try:
        info = index_info(args.index, check=args.check)
    except EngineError as exc:
        if not args.check:
            raise
        from .store.store_check import check_index

        # Too damaged to describe: the check still says what it can (and names repair).
        info = {"exists": True, "rasters": [], "notes": [str(exc)], "check": check_index(args.index)}
    bad = bool(info.get("check") and not info["check"]["ok"])
    if args.format == "json":
        print(json.dumps(info, indent=2, default=str))
        return 0 if info["exists"] and not bad else EXIT_ERROR
    if not info["exists"]:
        raise EngineError(f"no search index at {args.index}")
    print(f"index {args.index}")
    for k in ("tiles", "cached_tiles", "variants", "embedder", "document_graph", "captioners", "schema_version"):
        if k in info:
            print(f"  {k}: {info[k]}")
    for note in info.get("notes", []):
        print(f"  note: {note}")
    for r in info["rasters"]:
        flag = " (file missing)" if r.get("missing") else ""
        print(f"  - {r.get('name')}: {r.get('state')}, {r.get('tiles', 0)} tiles, {r.get('variants', 0)} variants{flag}")
    if "check" in info:
        c = info["check"]
        print(f"  check: SQLite {c['integrity']}, {c['vectors_checked']} vectors read, {c['damaged_vectors']} damaged")
        for p in c["problems"]:
            print(f"  problem: {p}")
        if c["ok"]:
            print("  check: no problems found")
    return EXIT_ERROR if bad else 0


def cmd_repair(args: argparse.Namespace) -> int:
    from .indexing import repair_index_dir

    bar = _Bar(args.quiet)
    try:
        rep = repair_index_dir(args.index, embedder=args.embedder, device=args.device, progress=bar)
    finally:
        bar.close()
    lost = {k: v for k, v in rep["unreadable_rows"].items() if v}
    print(f"repaired {args.index}: copied " + ", ".join(f"{v} {k}" for k, v in rep["copied"].items() if k != "meta"))
    if lost:
        print("  unreadable and dropped: " + ", ".join(f"{'the whole table' if v < 0 else f'{v} row(s) of'} {k}"
                                                      for k, v in lost.items()))
    print(f"  re-embedded {rep['reembedded']} caption variant(s) from their text (nothing re-captioned)")
    if rep["not_reembedded"]:
        print(f"  {rep['not_reembedded']} variant(s) still need embedding: run `index` with the embedder {rep['embedder']}")
    print(f"  the damaged database is kept in {rep['old_database']} (delete it once you are satisfied)")
    print("  run `index` on the same rasters to fill in any tiles that were lost")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from .indexing import prune_index_dir

    r = prune_index_dir(args.index, dry_run=args.dry_run, wait_s=args.wait)
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {r['captions']} cached caption variant(s) ({r['bytes'] / 1e6:.1f} MB of text) and {r['tiles']}"
          " tile(s) of tilings no longer used; switching back to those tilings or captioners will caption again")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from .indexing import remove_rasters

    removed = remove_rasters(args.index, args.rasters, wait_s=args.wait)
    print(f"removed {len(removed)} raster(s) from {args.index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m plugin", description="Semantic Imagery Search engine")
    sub = p.add_subparsers(dest="command", required=True)

    pi = sub.add_parser("index", help="caption, embed and index rasters (incremental, resumable)",
                        epilog=INDEX_EXIT_STATUS, formatter_class=argparse.RawDescriptionHelpFormatter)
    pi.add_argument("--index", required=True, help="index folder (created if missing)")
    pi.add_argument("--captioner", default="spectral", help="spectral | transformers:MODEL | openai:BASE_URL#MODEL")
    pi.add_argument("--embedder", default=None, help="sentence-transformers model id or folder (default: packaged MiniLM)")
    pi.add_argument("--tile-size", type=int, default=512, help="tile size in pixels (default 512)")
    pi.add_argument("--tile-size-units", type=float, default=None, help="tile size in ground units (overrides --tile-size)")
    pi.add_argument("--out-size", type=int, default=None, help="pixels of the image given to the captioner")
    pi.add_argument("--overlap", type=parse_overlap, default=0.0, help="overlap as a fraction of the tile size")
    pi.add_argument("--scales", type=parse_scales, default=(1,), help="tile scales, e.g. 1,2,4")
    pi.add_argument("--bands", type=parse_bands, default=None, help="1-based R,G,B[,NIR] band map")
    pi.add_argument("--variants", type=int, default=None, help="caption variants per tile (default: the preset's)")
    pi.add_argument("--preset", default=None, help="prompt preset: rsrt (5 variants x 3 fields) or fast")
    pi.add_argument("--batch-size", type=int, default=None)
    pi.add_argument("--max-new-tokens", type=int, default=None)
    pi.add_argument("--captioner-option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                    help="any captioner option, repeatable, e.g. cache=static, reuse_vision=true, max_rows=192, "
                         "compile=false, dtype=float16 (transformers captioner)")
    pi.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    pi.add_argument("--document-graph", choices=("auto", "fp32", "int8"), default="auto",
                    help="a NEW index's caption embedding: int8 (~1.6x faster on CPU, the CPU default) or fp32 (the"
                         " torch vectors, the GPU default); an existing index keeps the graph it recorded")
    pi.add_argument("--api-key-env", default=None, help="environment variable holding the OpenAI-compatible API key")
    pi.add_argument("--connect-timeout", type=parse_seconds, default=None, metavar="S",
                    help="openai captioner: seconds to wait for a connection to the server (default 5)")
    pi.add_argument("--tile-deadline", type=parse_seconds, default=None, metavar="S",
                    help="openai captioner: seconds one tile may take, retries included (default 120)")
    pi.add_argument("--remove-missing", action="store_true", help="drop indexed rasters not listed here")
    pi.add_argument("--force", action="store_true", help="index plans past the tile limit (200,000 tiles per raster)")
    pi.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                    help="wait this long for another job writing the same index (default: refuse at once)")
    add_executor_args(pi)
    pi.add_argument("--format", choices=("table", "json"), default="table")
    pi.add_argument("--quiet", action="store_true", help="no progress bar")
    pi.add_argument("rasters", nargs="+", help="raster files (GeoTIFF, COG, JP2, VRT), folders of rasters (recursive) or Sentinel-2 products")
    pi.set_defaults(func=cmd_index)

    ps = sub.add_parser("search", help="rank the indexed tiles for a text query")
    ps.add_argument("--index", required=True)
    ps.add_argument("--top", type=int, default=10)
    ps.add_argument("--fusion", choices=("max", "mean", "top2"), default="max")
    ps.add_argument("--raster", action="append", help="only this raster (path or id); repeatable")
    ps.add_argument("--bbox", type=parse_bbox, default=None, help="minx,miny,maxx,maxy")
    ps.add_argument("--bbox-crs", default=None, help="CRS of --bbox (EPSG:4326, WKT...); default: each raster's CRS")
    ps.add_argument("--min-score", type=float, default=None)
    ps.add_argument("--suppress-overlaps", action="store_true", help="keep the best of overlapping hits across scales")
    ps.add_argument("--embedder", default=None)
    ps.add_argument("--device", default="auto")
    ps.add_argument("--format", choices=("table", "json", "geojson"), default="table")
    ps.add_argument("--ranker", choices=("dense", "lexical", "hybrid"), default=None,
                    help="dense (cosine), lexical (bm25 over the captions) or hybrid (both; the default)")
    ps.add_argument("--like", default=None, metavar="RASTER:COL,ROW[,SCALE]",
                    help="search by example: tiles like the one under this full-resolution pixel (no query then)")
    ps.add_argument("query", nargs="*", help='what to find; quote it, negative terms included: "beach -buildings"')
    ps.set_defaults(func=cmd_search)

    pn = sub.add_parser("info", help="what an index holds")
    pn.add_argument("--index", required=True)
    pn.add_argument("--format", choices=("table", "json"), default="table")
    pn.add_argument("--check", action="store_true", help="also check SQLite integrity, every stored vector and the hnsw file")
    pn.set_defaults(func=cmd_info)

    pr = sub.add_parser("remove", help="remove rasters (paths or ids) from an index")
    pr.add_argument("--index", required=True)
    pr.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    pr.add_argument("rasters", nargs="+")
    pr.set_defaults(func=cmd_remove)

    pp = sub.add_parser("prune", help="delete cached captions of tilings and captioners no longer used")
    pp.add_argument("--index", required=True)
    pp.add_argument("--dry-run", action="store_true", help="only say what would be freed")
    pp.add_argument("--wait", type=float, default=0.0, metavar="SECONDS")
    pp.set_defaults(func=cmd_prune)

    pa = sub.add_parser("repair", help="salvage a damaged index into a new database, re-embedding from the captions")
    pa.add_argument("--index", required=True)
    pa.add_argument("--embedder", default=None, help="the index's embedder (default: packaged MiniLM)")
    pa.add_argument("--device", default="auto")
    pa.add_argument("--quiet", action="store_true")
    pa.set_defaults(func=cmd_repair)

    from .eval.cli import add_eval_parser
    from .worker.worker import add_worker_parser

    add_eval_parser(sub)
    add_worker_parser(sub)
    return p


def _undecodable(argv: Sequence[str]) -> Optional[str]:
    """The first argument holding bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    for a in argv:
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:
            try:
                raw = a.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = a.encode("utf-8", "backslashreplace")
            return raw.decode("utf-8", "backslashreplace")
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    # transformers' own "Loading weights" bars would interleave with ours (and with the one-line
    # errors on stderr); read by huggingface_hub when transformers is first imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    bad = _undecodable(sys.argv[1:] if argv is None else argv)
    if bad is not None:
        print(f"error: argument '{bad}' is not valid UTF-8 text (use a UTF-8 locale, or rename the file)", file=sys.stderr)
        return EXIT_ERROR
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except (Canceled, KeyboardInterrupt):
        print("canceled: what was indexed so far is kept; run the same command again to resume", file=sys.stderr)
        return EXIT_CANCELED
