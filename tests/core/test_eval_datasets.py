"""Both dataset layouts (Karpathy JSON + images, precomp caps/filename) and their clear errors.

The builders here are also used by the other eval tests (`from tests.core.test_eval_datasets import ...`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plugin.core.eval.datasets import DatasetError, load_dataset, load_karpathy, load_precomp

#: Six small scenes, five reference captions each (the field's layout), colours matching the words.
SCENES = {
    "lake_1.png": ((30, 70, 160), [
        "a large blue lake surrounded by land", "calm dark blue water fills the scene",
        "a lake of deep blue water", "open water with no buildings", "the blue surface of a lake"]),
    "forest_2.png": ((30, 120, 40), [
        "dense green forest covers the area", "many green trees in a forest",
        "a thick forest of green vegetation", "green woodland with tall trees", "trees cover the whole image"]),
    "desert_3.png": ((215, 190, 130), [
        "a yellow sandy desert with dunes", "bare sand covers the ground",
        "a dry desert of pale yellow sand", "sand dunes in a desert", "an empty desert with no plants"]),
    "city_4.png": ((128, 128, 128), [
        "gray buildings and roads in a dense city", "many gray roofs of an urban area",
        "a residential area with houses and streets", "a city block with buildings", "dense urban buildings"]),
    "snow_5.png": ((245, 245, 250), [
        "white snow covers the mountains", "a bright white snowfield",
        "snow and ice over the land", "a snowy white landscape", "fresh snow on the ground"]),
    "farm_6.png": ((150, 170, 60), [
        "farmland with rectangular fields", "several green and brown crop fields",
        "agricultural fields in rows", "a rural area of farmland", "fields of crops next to each other"]),
}


def write_images(folder: Path, size: int = 32) -> Path:
    """Each scene as a textured PNG (its colour plus a seeded pattern)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for fname, (rgb, _) in SCENES.items():
        arr = np.clip(np.array(rgb, dtype=np.float64) + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / fname)
    return folder


def write_karpathy(folder: Path, test_names=None, with_images: bool = True) -> Path:
    """dataset_toy.json with the given scenes in `test` and one extra image in `train`."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(SCENES) if test_names is None else list(test_names)
    images = [{"filename": n, "imgid": i, "split": "test",
               "sentences": [{"raw": c, "tokens": c.split()} for c in SCENES[n][1]]} for i, n in enumerate(names)]
    images.append({"filename": "train_0.png", "split": "train", "sentences": [{"raw": "a training image"}]})
    path = folder / "dataset_toy.json"
    path.write_text(json.dumps({"dataset": "toy", "images": images}))
    if with_images:
        write_images(folder / "images")
    return path


def write_precomp(folder: Path, split: str = "test", prefix: str = "", one_name_per_image: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    caps = [c for _, (_, cs) in SCENES.items() for c in cs]
    names = list(SCENES) if one_name_per_image else [n for n in SCENES for _ in range(5)]
    (folder / f"{prefix}{split}_caps.txt").write_text("\n".join(caps) + "\n")
    (folder / f"{prefix}{split}_filename.txt").write_text("\n".join(names) + "\n")
    return folder


def _check_toy(ds) -> None:
    assert ds.images == list(SCENES)
    assert len(ds.captions) == 30
    assert ds.caption_image.tolist() == [i for i in range(6) for _ in range(5)]
    assert ds.captions_of(2) == SCENES["desert_3.png"][1]


def test_karpathy_layout(tmp_path):
    ds = load_dataset(write_karpathy(tmp_path))
    _check_toy(ds)
    assert (ds.name, ds.split, ds.layout) == ("toy", "test", "karpathy")
    assert ds.images_dir == tmp_path / "images"
    assert [p.name for p in ds.require_images()] == list(SCENES)
    # a folder holding one dataset_*.json is read the same way; other splits are selectable
    assert load_dataset(tmp_path).images == list(SCENES)
    assert load_dataset(tmp_path, split="train").images == ["train_0.png"]


@pytest.mark.parametrize("prefix,per_image", [("", False), ("rsitmd_", False), ("", True)])
def test_precomp_layouts(tmp_path, prefix, per_image):
    write_precomp(tmp_path, prefix=prefix, one_name_per_image=per_image)
    ds = load_dataset(tmp_path)
    _check_toy(ds)
    assert ds.layout == "precomp"
    if prefix:
        assert ds.name == "rsitmd"
        assert load_dataset(tmp_path / f"{prefix}test_caps.txt").images == list(SCENES)


def test_ucm_sydney_style_folder(tmp_path):
    # UCM-captions / Sydney-captions: dataset.json with numeric file names and an imgs/ folder
    path = write_karpathy(tmp_path, with_images=False)
    doc = json.loads(path.read_text())
    for i, img in enumerate(doc["images"]):
        img["filename"] = f"{i + 1}.tif"
    path.unlink()
    (tmp_path / "dataset.json").write_text(json.dumps({"images": doc["images"]}))
    (tmp_path / "imgs").mkdir()
    ds = load_dataset(tmp_path)
    assert ds.images == [f"{i}.tif" for i in range(1, 7)] and ds.name == tmp_path.name
    assert ds.images_dir == tmp_path / "imgs" and len(ds.captions) == 30


def test_precomp_images_folder_is_optional_until_needed(tmp_path):
    ds = load_precomp(write_precomp(tmp_path))
    with pytest.raises(DatasetError, match="no images folder"):
        ds.require_images()
    write_images(tmp_path / "images")
    assert len(load_precomp(tmp_path).require_images()) == 6


def test_missing_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "nothing.json")
    with pytest.raises(DatasetError, match="no test_caps.txt"):
        load_dataset(tmp_path)
    (tmp_path / "test_caps.txt").write_text("a caption\n")
    with pytest.raises(DatasetError, match="test_filename.txt are missing"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "elsewhere")


def test_missing_images(tmp_path):
    path = write_karpathy(tmp_path)
    (tmp_path / "images" / "city_4.png").unlink()
    with pytest.raises(DatasetError, match="1 of 6 images not found, first: .*city_4.png"):
        load_karpathy(path).require_images()


def test_mismatched_counts(tmp_path):
    write_precomp(tmp_path)
    lines = (tmp_path / "test_filename.txt").read_text().splitlines()
    (tmp_path / "test_filename.txt").write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(DatasetError, match="has 30 captions but test_filename.txt has 27 file names"):
        load_dataset(tmp_path)


def test_empty_split(tmp_path):
    path = write_karpathy(tmp_path, with_images=False)
    with pytest.raises(DatasetError, match=r"split 'val' is empty \(splits present: test, train\)"):
        load_dataset(path, split="val")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "test_caps.txt").write_text("\n")
    (tmp_path / "p" / "test_filename.txt").write_text("")
    with pytest.raises(DatasetError, match="empty"):
        load_dataset(tmp_path / "p")


def test_malformed_json(tmp_path):
    bad = tmp_path / "dataset_bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="not a readable JSON"):
        load_dataset(bad)
    bad.write_text(json.dumps({"images": [{"split": "test"}]}))
    with pytest.raises(DatasetError, match="no 'filename'"):
        load_dataset(bad)
