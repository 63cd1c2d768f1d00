"""Caption workers that say when their model is loaded: the job's "starting workers k/n ready".

Ray Data's actor pool does not tell the driver when an actor's constructor (the model load) has
finished, so each caption actor tells a tiny counter actor (no CPU) once its captioner is built;
the driver asks the counter while it waits for the first results (`RayExecutor._poll_ready`).
"""

from __future__ import annotations

from typing import Any, Optional

from .ray_stages import CaptionStage


class ReadyCounter:
    """A tiny actor (no CPU) the caption workers tell when their model is loaded."""

    def __init__(self) -> None:
        self.n = 0

    def add(self) -> int:
        self.n += 1
        return self.n

    def count(self) -> int:
        return self.n


class ReportingCaptionStage(CaptionStage):
    """The caption stage, plus "my model is loaded" to the job's ReadyCounter (k/n workers ready)."""

    def __init__(self, spec: str, options: dict[str, Any], expected_fingerprint: Optional[str] = None,
                 ready: Any = None) -> None:
        super().__init__(spec, options, expected_fingerprint)
        if ready is not None:
            try:
                ready.add.remote()
            except Exception:  # pragma: no cover - a progress nicety must never fail the stage
                pass
