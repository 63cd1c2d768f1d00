"""Child process of `test_ray_executor.test_cancel_stops_and_leaves_no_ray_process`.

Ray's in-process driver keeps threads and a core worker that can end its host process (`_exit`)
when its raylet goes away later; run inside pytest, that killed the whole test session. So the
job that starts a private local cluster and is cancelled runs here, and reports as JSON:
  python -m tests.core.ray_cancel_job INDEX_DIR TEMP_DIR SCENE [SCENE ...]
"""

from __future__ import annotations

import json
import sys
import threading

from plugin.core.errors import Canceled
from plugin.core.indexing import index_rasters
from plugin.core.rasters.tiling import TilingParams
from plugin.core.types import RasterSource
from tests.core.ray_cluster import pids_under as _pids_under


def main(argv: list[str]) -> int:
    idx, tmp, *scenes = argv
    cancel = threading.Event()
    seen: set[int] = set()

    def progress(done: int, total: int, message: str) -> None:
        seen.update(_pids_under(tmp))
        if done >= 4:
            cancel.set()

    canceled = False
    try:
        index_rasters(idx, [RasterSource(p) for p in scenes], captioner="python:tests.core.ray_captioners:slow",
                      tiling=TilingParams(tile_size=48), captioner_options={"variants": 1}, executor="ray",
                      executor_options={"num_cpus": 2, "temp_dir": tmp}, progress=progress, is_canceled=cancel.is_set)
    except Canceled:
        canceled = True
    print(json.dumps({"canceled": canceled, "seen": sorted(seen)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
