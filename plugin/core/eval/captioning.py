"""Caption variants of dataset images: the JSONL captions file, and the `full` mode's captioning.

The captions file holds one record per image, `{"image": FILE, "captioner": FP, "variants":
[{"one_sentence", "feature", "caption"}, ...]}` -- the paper's RSRT record -- so captions made on a
GPU server or by another VLM can be scored with `--mode captions-file`. The `full` mode writes the
same records as its cache (keyed by image file name and captioner fingerprint), appending after
every batch, so a rerun or a resumed run captions nothing twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import Canceled
from ..types import (
    CancelFn,
    Captioner,
    CaptionVariant,
    PixelWindow,
    ProgressFn,
    TileImage,
    TileRef,
    never_canceled,
    no_progress,
)
from .datasets import DatasetError, EvalDataset

PathLike = Union[str, Path]
_IMAGE_KEYS = ("image", "filename", "file_name", "file")
_VARIANT_KEYS = ("variants", "captions")


def _variant(v: object, where: str) -> CaptionVariant:
    if isinstance(v, str):
        return CaptionVariant(v, "", "")
    if isinstance(v, dict):
        if not any(k in v for k in ("one_sentence", "feature", "caption")):
            raise DatasetError(f"{where}: a variant needs one_sentence, feature or caption")
        return CaptionVariant.from_dict(v)
    raise DatasetError(f"{where}: a variant must be an object with one_sentence/feature/caption or a string")


def read_captions_file(path: PathLike, captioner_fp: Optional[str] = None) -> dict[str, list[CaptionVariant]]:
    """Image file name -> caption variants; with `captioner_fp`, only that captioner's records.

    A later record for the same image replaces an earlier one (an appended cache wins).
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"captions file not found: {p}")
    out: dict[str, list[CaptionVariant]] = {}
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{p.name} line {n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise DatasetError(f"{where}: expected one JSON object per line")
            image = next((rec[k] for k in _IMAGE_KEYS if k in rec), None)
            raw = next((rec[k] for k in _VARIANT_KEYS if k in rec), None)
            if not image or not isinstance(raw, list):
                raise DatasetError(f"{where}: expected {{\"image\": FILE, \"variants\": [...]}}")
            if captioner_fp is not None and rec.get("captioner") != captioner_fp:
                continue
            out[str(image)] = [_variant(v, where) for v in raw]
    if not out and captioner_fp is None:
        raise DatasetError(f"{p.name}: no caption records")
    return out


def caption_record(image: str, variants: Sequence[CaptionVariant], captioner_fp: Optional[str] = None) -> str:
    """One JSONL line of the captions file."""
    rec: dict = {"image": image}
    if captioner_fp is not None:
        rec["captioner"] = captioner_fp
    rec["variants"] = [v.to_dict() for v in variants]
    return json.dumps(rec, ensure_ascii=False)


def write_captions_file(
    path: PathLike, captions: Mapping[str, Sequence[CaptionVariant]], captioner_fp: Optional[str] = None
) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("".join(caption_record(k, v, captioner_fp) + "\n" for k, v in captions.items()), encoding="utf-8")
    tmp.replace(p)


def read_image_rgb(path: PathLike) -> np.ndarray:
    """(H, W, 3) uint8 of an image file; PIL first, rasterio for TIFFs PIL cannot decode."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"image not found: {p}")
    try:
        from PIL import Image

        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except Exception as pil_exc:  # noqa: BLE001 - any decoder failure falls through to rasterio
        try:
            import rasterio

            with rasterio.open(p) as ds:
                bands = [1, 2, 3] if ds.count >= 3 else [1, 1, 1]
                arr = ds.read(bands).astype(np.float32)
            lo, hi = np.nanpercentile(arr, 2), np.nanpercentile(arr, 98)
            scaled = np.clip((arr - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255)
            return np.transpose(scaled, (1, 2, 0)).astype(np.uint8)
        except Exception:  # noqa: BLE001
            raise DatasetError(f"cannot read image {p.name}: {pil_exc}") from None


def image_tile(path: PathLike, dataset_name: str = "eval") -> TileImage:
    """A dataset image as the TileImage captioners take (no NIR, every pixel valid, pixel footprint)."""
    p = Path(path)
    rgb = read_image_rgb(p)
    h, w = rgb.shape[:2]
    ring = ((0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h)), (0.0, 0.0))
    ref = TileRef(tile_id=p.name, raster_id=f"eval:{dataset_name}", window=PixelWindow(0, 0, w, h), scale=1, footprint=ring)
    raw = np.transpose(rgb, (2, 0, 1)).astype(np.float32)
    return TileImage(ref=ref, rgb=rgb, raw=raw, valid=np.ones((h, w), dtype=bool), has_nir=False)


def _batches(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def caption_dataset(
    dataset: EvalDataset,
    captioner: Captioner,
    cache_path: Optional[PathLike] = None,
    batch_size: Optional[int] = None,
    progress: ProgressFn = no_progress,
    is_canceled: CancelFn = never_canceled,
) -> dict[str, list[CaptionVariant]]:
    """Caption every gallery image (cached ones are read back, new ones appended to the cache).

    On cancel the batches already captioned stay in the cache and `Canceled` is raised.
    """
    paths = dataset.require_images()
    fp = captioner.fingerprint
    done: dict[str, list[CaptionVariant]] = {}
    cache = Path(cache_path) if cache_path else None
    if cache is not None and cache.is_file():
        done = read_captions_file(cache, captioner_fp=fp)
    todo = [i for i, f in enumerate(dataset.images) if not done.get(f)]
    size = max(1, int(batch_size or getattr(captioner, "batch_size", None) or 8))
    total = len(dataset.images)
    progress(total - len(todo), total, "captioning")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
    captioned = total - len(todo)
    for batch in _batches(todo, size):
        if is_canceled():
            raise Canceled()
        tiles = [image_tile(paths[i], dataset.name) for i in batch]
        variants = captioner.caption(tiles)
        if len(variants) != len(batch):
            raise DatasetError(f"captioner returned {len(variants)} results for {len(batch)} images")
        lines = []
        for i, vs in zip(batch, variants):
            done[dataset.images[i]] = list(vs)
            lines.append(caption_record(dataset.images[i], vs, fp))
        if cache is not None:
            with open(cache, "a", encoding="utf-8") as fh:
                fh.write("".join(ln + "\n" for ln in lines))
        captioned += len(batch)
        progress(captioned, total, "captioning")
    return {f: done[f] for f in dataset.images}
