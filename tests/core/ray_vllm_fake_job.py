"""Child process of `test_ray_executor.test_vllm_captioner_path_with_a_stand_in_processor`.

The `vllm:` captioner's whole Ray path (chunk rows, request rows, the processor's place in the
dataset, parse + embed actor, reassembly on the driver, the writer) on the tests' shared Ray head,
which declares one (logical) GPU (token auth from the environment), with `ray.data.llm`'s processor replaced by a stand-in that checks the
rows it gets are what the processor needs and answers like vLLM would (vLLM is not installed here).
  python -m tests.core.ray_vllm_fake_job INDEX_DIR ADDRESS RASTER
Prints the job report as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

ANSWER = {"one_sentence": "Fields beside a village.", "feature": "fields in the south; houses in the north",
          "caption": "Green fields and a few roofs."}


def fake_identity(spec: str, options: dict[str, Any]) -> tuple[str, int]:
    from plugin.core.captioners.vllm_ray import parse_vllm_spec

    s = parse_vllm_spec(spec, options)
    return f"vllm|{s.model}|rev=stand-in|k={s.variants}", s.batch_size


def fake_processor(spec: Any, workers: int, keep: Any) -> Any:
    cols = list(keep)

    def answer(batch: dict) -> dict:
        out = {c: batch[c] for c in cols}
        texts = []
        for msgs, sp, k in zip(batch["messages"], batch["sampling_params"], batch["k"]):
            user = msgs[-1]
            if int(k) >= 0:  # a tile's variant: the image (a JPEG data URL) first, then the wording
                assert msgs[0]["role"] == "system" and user["role"] == "user"
                assert str(user["content"][0]["image_url"]["url"]).startswith("data:image/jpeg;base64,")
                assert "JSON" in user["content"][1]["text"]
                assert float(sp["temperature"]) == (0.0 if int(k) == 0 else 0.7)
                texts.append(json.dumps({**ANSWER, "caption": f"{ANSWER['caption']} (variant {int(k)})"}))
            else:
                texts.append("OK")
        out["text"] = np.array(texts, dtype=object)
        return out

    return lambda ds: ds.map_batches(answer, batch_format="numpy", batch_size=workers * 4)


def main(argv: list[str]) -> int:
    idx, address, raster = argv
    import ray

    from plugin.core.indexing import index_rasters
    from plugin.core.indexing.cluster import ray_exec, ray_vllm
    from plugin.core.rasters.tiling import TilingParams
    from plugin.core.types import RasterSource

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ray.init(address=address, log_to_driver=False, runtime_env={"py_modules": [os.path.join(root, "plugin")]})
    ray_exec.vllm_identity = fake_identity  # no vLLM here: the cluster-side check is stood in for
    ray_vllm.build_vllm_processor = fake_processor
    try:
        rep = index_rasters(idx, [RasterSource(raster)], captioner="vllm:stand-in/vlm", tiling=TilingParams(tile_size=128),
                            captioner_options={"variants": 2, "batch_size": 3}, executor="ray")
    finally:
        ray.shutdown()
    print(json.dumps(rep.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
