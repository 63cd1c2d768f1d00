"""Argument types of the command line: each turns one argument's text into a value or raises
argparse.ArgumentTypeError with a one-line reason (argparse prints it as the usual error)."""

from __future__ import annotations

import argparse
from typing import Any

from .errors import EngineError
from .types import BandMap


def _scales(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"scales {text!r}: expected integers like 1,2,4") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"scales {text!r}: expected positive integers like 1,2,4")
    return vals


def _bands(text: str) -> BandMap:
    try:
        return BandMap.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _overlap(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"overlap {text!r}: expected a fraction like 0.25") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError("overlap must be a fraction of the tile size, 0 <= overlap < 1")
    return v


def _option(text: str) -> tuple[str, Any]:
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


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return v


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or vals[0] >= vals[2] or vals[1] >= vals[3]:
        raise argparse.ArgumentTypeError("bbox: expected minx,miny,maxx,maxy with min < max")
    return vals  # type: ignore[return-value]


def _path_map(text: str) -> tuple[str, str]:
    local, sep, remote = str(text).partition("=")
    if not sep or not local.strip() or not remote.strip():
        raise argparse.ArgumentTypeError(f"expected LOCAL=CLUSTER (a local path prefix and how the cluster sees it), got {text!r}")
    return local.strip(), remote.strip()


def _executor_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.caption_workers is not None and args.caption_workers < 1:
        raise EngineError("--caption-workers must be at least 1")
    if args.executor == "local" and (args.ray_address or args.caption_workers):
        raise EngineError("--ray-address and --caption-workers need --executor ray or ray-job")
    if args.executor != "ray-job" and (args.ray_dashboard or args.shared_dir or args.path_map):
        raise EngineError("--ray-dashboard, --shared-dir and --path-map need --executor ray-job")
    if args.executor == "ray":
        return {k: v for k, v in (("address", args.ray_address), ("caption_workers", args.caption_workers)) if v}
    if args.executor == "ray-job":
        if args.ray_address:
            raise EngineError("--executor ray-job talks to the dashboard (--ray-dashboard URL), not --ray-address")
        if not args.ray_dashboard or not args.shared_dir:
            raise EngineError("--executor ray-job needs --ray-dashboard URL and --shared-dir DIR")
        opts: dict[str, Any] = {"dashboard_url": args.ray_dashboard, "shared_dir": args.shared_dir,
                                "path_map": [list(p) for p in args.path_map or []]}
        if args.caption_workers:
            opts["caption_workers"] = args.caption_workers
        return opts
    return {}
