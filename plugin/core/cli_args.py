"""Argument types of the command line: each turns one argument's text into a value or raises
argparse.ArgumentTypeError with a one-line reason (argparse prints it as the usual error)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .errors import EngineError
from .types import BandMap


def parse_scales(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales {text!r}: expected integers like 1,2,4") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"scales {text!r}: expected positive integers like 1,2,4")
    return vals


def parse_bands(text: str) -> BandMap:
    try:
        return BandMap.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_overlap(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"overlap {text!r}: expected a fraction like 0.25") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError("overlap must be a fraction of the tile size, 0 <= overlap < 1")
    return v


def parse_option(text: str) -> tuple[str, Any]:
    """KEY=VALUE -> (key, value) with ints, floats, true/false and none understood ("auto" stays a string)."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"captioner option {text!r} is not KEY=VALUE (e.g. cache=static)")
    low = raw.strip().lower()
    if low in ("true", "yes", "on"):
        return key, True
    if low in ("false", "no", "off"):
        return key, False
    if low == "none":
        return key, None
    for conv in (int, float):
        try:
            return key, conv(raw)
        except ValueError:
            pass
    return key, raw.strip()


def parse_seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return v


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or vals[0] >= vals[2] or vals[1] >= vals[3]:
        raise argparse.ArgumentTypeError("bbox: expected minx,miny,maxx,maxy with min < max")
    return vals  # type: ignore[return-value]


# ---- where the index job runs (--executor and the cluster options) -------------------------------


def add_executor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=("local", "ray", "ray-job"), default="local",
                   help="where tiles are read, captioned and embedded: this process, a Ray cluster this process "
                        "drives (Ray Data), or a Ray job submitted to a cluster's dashboard (job mode)")
    p.add_argument("--ray-address", default=None,
                   help="ray: cluster to attach to (host:port); default: a private local one on 127.0.0.1."
                        " Token auth: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in the environment")
    p.add_argument("--ray-dashboard", default=None, metavar="URL", help="ray-job: the cluster's dashboard, e.g. http://head:8265")
    p.add_argument("--shared-dir", default=None, metavar="DIR",
                   help="ray-job: a folder or URI this computer and the cluster both reach (result shards go there)")
    p.add_argument("--path-map", action="append", default=None, metavar="LOCAL=CLUSTER",
                   help="ray, ray-job: rasters under LOCAL are read on the cluster under CLUSTER (repeatable)")
    p.add_argument("--caption-workers", type=int, default=None, help="most caption actors on the cluster (default: one per GPU)")
    p.add_argument("--keep-shards", action="store_true", default=None,
                   help="ray-job: leave the merged result shards and the job's manifest in --shared-dir (by default"
                        " they are deleted once the index holds them and the job has succeeded)")


def executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """`executor_options` of index_rasters from the flags; a flag the chosen executor ignores is an error."""
    from .errors import EngineError
    from .indexing.path_map import parse_path_map

    given = {"address": args.ray_address, "dashboard_url": args.ray_dashboard, "shared_dir": args.shared_dir,
             "path_map": args.path_map, "caption_workers": args.caption_workers, "keep_shards": args.keep_shards}
    flags = {"address": "--ray-address", "dashboard_url": "--ray-dashboard", "shared_dir": "--shared-dir",
             "path_map": "--path-map", "caption_workers": "--caption-workers", "keep_shards": "--keep-shards"}
    allowed = {"local": set(), "ray": {"address", "path_map", "caption_workers"},
               "ray-job": {"dashboard_url", "shared_dir", "path_map", "caption_workers", "keep_shards"}}[args.executor]
    wrong = [flags[k] for k, v in given.items() if v is not None and k not in allowed]
    if wrong:
        raise EngineError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to --executor {args.executor}")
    if args.caption_workers is not None and args.caption_workers < 1:
        raise EngineError("--caption-workers must be at least 1")
    out: dict[str, Any] = {k: v for k, v in given.items() if v is not None and k != "path_map"}
    if args.path_map:
        out["path_map"] = [list(p) for p in parse_path_map(args.path_map)]
    return out


def captioner_options(args: Any) -> dict[str, Any]:
    """The index command's captioner options from its flags (--captioner-option first, then the named flags)."""
    opts: dict[str, Any] = dict(args.captioner_option)
    for flag in ("variants", "preset", "batch_size", "max_new_tokens"):
        if getattr(args, flag):
            opts[flag] = getattr(args, flag)
    if args.connect_timeout is not None:
        opts["connect_timeout_s"] = args.connect_timeout
    if args.tile_deadline is not None:
        opts["tile_deadline_s"] = args.tile_deadline
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise EngineError(f"environment variable {args.api_key_env} is not set (it should hold the API key)")
        opts["api_key"] = key
    return opts
