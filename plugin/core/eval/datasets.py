"""Image-caption retrieval datasets in the two layouts the field ships them in.

* Karpathy JSON (`dataset_rsitmd.json`, `dataset_rsicd.json`, UCM-captions, Sydney-captions):
  `{"images": [{"filename", "split", "sentences": [{"raw"}, ...]}, ...]}` plus an images folder.
* "precomp" text pairs (AMFMN): `<split>_caps.txt` (one caption a line) and `<split>_filename.txt`
  (the image of each caption line, or one line per image when every image has 5 captions).
  A name prefix such as `rsitmd_test_caps.txt` is accepted too.

Only the captions are needed for the captions-only proxy; images are checked when a mode reads them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import EngineError

PathLike = Union[str, Path]
#: Captions per image in every benchmark of the field; the precomp layout relies on it.
CAPTIONS_PER_IMAGE = 5
#: Image folder names the public releases use beside their caption files (UCM/Sydney ship `imgs/`).
_IMAGE_DIRS = ("images", "imgs", "Images")


class DatasetError(EngineError):
    """An evaluation dataset is missing, malformed, inconsistent or has an empty split."""


@dataclass
class EvalDataset:
    """One split: gallery images in file order and their reference captions."""

    name: str
    split: str
    #: Image file names, the gallery order (first appearance in the source files).
    images: list[str]
    #: All reference captions, grouped per image in gallery order.
    captions: list[str]
    #: Gallery index of the image of each caption.
    caption_image: np.ndarray
    #: Folder holding the image files (None when unknown: captions-only use).
    images_dir: Optional[Path] = None
    #: Where it was read from, for the report.
    source: str = ""
    layout: str = ""
    extra: dict = field(default_factory=dict)

    def captions_of(self, image_index: int) -> list[str]:
        return [self.captions[i] for i in np.flatnonzero(self.caption_image == image_index)]

    def image_path(self, image_index: int) -> Path:
        if self.images_dir is None:
            raise DatasetError(f"{self.name}: no images folder given (use --images)")
        return self.images_dir / self.images[image_index]

    def require_images(self) -> list[Path]:
        """Paths of every gallery image; DatasetError naming the first missing one."""
        paths = [self.image_path(i) for i in range(len(self.images))]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(
                f"{self.name}: {len(missing)} of {len(paths)} images not found, first: {missing[0]} (check --images)"
            )
        return paths

    def describe(self) -> dict:
        return {
            "name": self.name, "split": self.split, "layout": self.layout, "source": self.source,
            "images": len(self.images), "captions": len(self.captions),
            "images_dir": str(self.images_dir) if self.images_dir else None,
        }


def _grouped(name: str, split: str, pairs: list[tuple[str, str]], **kw) -> EvalDataset:
    """(filename, caption) pairs -> dataset with captions regrouped per image, order kept."""
    if not pairs:
        raise DatasetError(f"{name}: split {split!r} is empty (no captions)")
    order: dict[str, int] = {}
    per: list[list[str]] = []
    for fname, cap in pairs:
        if fname not in order:
            order[fname] = len(per)
            per.append([])
        per[order[fname]].append(cap)
    captions = [c for caps in per for c in caps]
    owner = np.repeat(np.arange(len(per)), [len(c) for c in per])
    return EvalDataset(name=name, split=split, images=list(order), captions=captions, caption_image=owner, **kw)


def load_karpathy(json_path: PathLike, split: str = "test", images_dir: Optional[PathLike] = None) -> EvalDataset:
    """Read a Karpathy-style JSON; images default to `images/` (or `imgs/`) beside it, else its own folder."""
    p = Path(json_path)
    if not p.is_file():
        raise DatasetError(f"dataset file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{p.name}: not a readable JSON file ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{p.name}: expected a Karpathy-style JSON with an 'images' list")
    stem = p.stem.replace("dataset_", "")
    name = str(data.get("dataset") or (p.parent.name if stem == "dataset" else stem))
    pairs: list[tuple[str, str]] = []
    splits: set[str] = set()
    for n, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "filename" not in img:
            raise DatasetError(f"{p.name}: image entry {n} has no 'filename'")
        splits.add(str(img.get("split", "")))
        if str(img.get("split", "")) != split:
            continue
        sents = img.get("sentences") or []
        raws = [str(s.get("raw", "")).strip() if isinstance(s, dict) else str(s).strip() for s in sents]
        if not raws:
            raise DatasetError(f"{p.name}: image {img['filename']} has no sentences")
        fname = str(img["filename"])
        pairs.extend((fname, r) for r in raws)
    if not pairs:
        have = ", ".join(sorted(s for s in splits if s)) or "none"
        raise DatasetError(f"{p.name}: split {split!r} is empty (splits present: {have})")
    if images_dir is None:
        images_dir = next((p.parent / d for d in _IMAGE_DIRS if (p.parent / d).is_dir()), p.parent)
    return _grouped(name, split, pairs, images_dir=Path(images_dir), source=str(p), layout="karpathy")


def _precomp_files(path: Path, split: str) -> tuple[Path, Path]:
    if path.is_file():
        if not path.name.endswith("_caps.txt"):
            raise DatasetError(f"{path.name}: expected a <split>_caps.txt file, a folder, or a Karpathy JSON")
        caps = path
    elif path.is_dir():
        caps = path / f"{split}_caps.txt"
        if not caps.is_file():
            found = sorted(path.glob(f"*_{split}_caps.txt"))
            if len(found) > 1:
                raise DatasetError(f"{path}: several {split} caption files ({', '.join(f.name for f in found)}); pass one")
            if not found:
                raise DatasetError(f"{path}: no {split}_caps.txt (or <name>_{split}_caps.txt) for split {split!r}")
            caps = found[0]
    else:
        raise DatasetError(f"dataset not found: {path}")
    names = caps.with_name(caps.name[: -len("_caps.txt")] + "_filename.txt")
    if not names.is_file():
        raise DatasetError(f"{caps.name}: the matching file names {names.name} are missing")
    return caps, names


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path.name}: cannot read ({exc.__class__.__name__}: {exc})") from None
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def load_precomp(
    path: PathLike, split: str = "test", images_dir: Optional[PathLike] = None, name: Optional[str] = None
) -> EvalDataset:
    """Read a caps/filename pair from a folder (or from the `_caps.txt` file itself)."""
    caps_path, names_path = _precomp_files(Path(path), split)
    caps, names = _lines(caps_path), _lines(names_path)
    if not caps:
        raise DatasetError(f"{caps_path.name}: split {split!r} is empty (no captions)")
    if any(not n for n in names):
        raise DatasetError(f"{names_path.name}: blank file name on line {names.index('') + 1}")
    if len(names) == len(caps):
        pairs = list(zip(names, caps))
    elif len(caps) == CAPTIONS_PER_IMAGE * len(names):
        pairs = [(names[i // CAPTIONS_PER_IMAGE], c) for i, c in enumerate(caps)]
    else:
        raise DatasetError(
            f"{caps_path.name} has {len(caps)} captions but {names_path.name} has {len(names)} file names "
            f"(expected one per caption or one per {CAPTIONS_PER_IMAGE} captions)"
        )
    stem = caps_path.name[: -len("_caps.txt")]
    ds_name = name or (stem[: -len(split) - 1] if stem.endswith("_" + split) else caps_path.parent.name)
    folder = Path(images_dir) if images_dir is not None else None
    if folder is None:
        folder = next((caps_path.parent / d for d in _IMAGE_DIRS if (caps_path.parent / d).is_dir()), None)
    return _grouped(ds_name, split, pairs, images_dir=folder, source=str(caps_path), layout="precomp")


def load_dataset(path: PathLike, split: str = "test", images_dir: Optional[PathLike] = None) -> EvalDataset:
    """Either layout: a `.json` file is Karpathy, a folder or `_caps.txt` file is precomp.

    A folder holding exactly one `dataset*.json` (and no precomp files for the split) is read as
    Karpathy, so pointing at a downloaded dataset folder works (UCM/Sydney name theirs `dataset.json`).
    """
    p = Path(path)
    if p.suffix.lower() == ".json":
        return load_karpathy(p, split, images_dir)
    if p.is_dir() and not (p / f"{split}_caps.txt").is_file() and not list(p.glob(f"*_{split}_caps.txt")):
        jsons = sorted(p.glob("dataset*.json"))
        if len(jsons) == 1:
            return load_karpathy(jsons[0], split, images_dir)
    return load_precomp(p, split, images_dir)
