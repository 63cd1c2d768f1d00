"""`full` mode with a tiny random-weight LLaVA through the real transformers captioner and the CLI.

The captions are gibberish (random weights); what is checked is the whole path: images read into
tiles, batched generation, the caption cache keyed by captioner fingerprint (a rerun generates
nothing), embedding, metrics and the report's configuration.
"""

from __future__ import annotations

import json

import pytest

from plugin.core.eval.captioning import read_captions_file
from plugin.core.eval.cli import main as eval_main
from tests.core.test_eval_datasets import SCENES, write_karpathy
from tests.core.tiny_vlm import build_tiny_llava


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def test_full_mode_with_tiny_vlm(tmp_path, tiny_llava, capsys):
    data = write_karpathy(tmp_path / "data")
    cache_dir = tmp_path / "cache"
    argv = ["--dataset", str(data), "--mode", "full", "--captioner", f"transformers:{tiny_llava}",
            "--variants", "2", "--max-new-tokens", "6", "--batch-size", "3", "--device", "cpu",
            "--fusion", "max,top2", "--max-variants", "1,2", "--cache-dir", str(cache_dir),
            "--out", str(tmp_path / "res"), "--quiet"]
    assert eval_main(argv) == 0
    table = capsys.readouterr().out
    assert "toy full K=1 max" in table and "toy full K=2 top2" in table
    cache = cache_dir / "captions-toy-test.jsonl"
    lines = cache.read_text().splitlines()
    assert len(lines) == len(SCENES)
    records = [json.loads(ln) for ln in lines]
    fp = records[0]["captioner"]
    assert fp.startswith("transformers") and all(len(r["variants"]) == 2 for r in records)
    doc = json.loads((tmp_path / "res.json").read_text())
    assert [r["config"]["captioner"] for r in doc["results"]] == [fp] * 4
    assert doc["results"][0]["config"]["captioner_spec"] == f"transformers:{tiny_llava}"
    assert doc["results"][0]["dataset"]["split"] == "test"
    assert [r["metrics"]["query_captions"] for r in doc["results"]] == [30] * 4
    assert [r["config"]["variants_total"] for r in doc["results"]] == [6, 6, 12, 12]
    # the rerun is free: every image comes from the cache (nothing appended), same numbers
    assert eval_main(argv) == 0
    assert cache.read_text().splitlines() == lines
    again = json.loads((tmp_path / "res.json").read_text())
    assert [r["metrics"] for r in again["results"]] == [r["metrics"] for r in doc["results"]]
    # the cache is itself a captions file another run can score
    assert set(read_captions_file(cache, captioner_fp=fp)) == set(SCENES)
