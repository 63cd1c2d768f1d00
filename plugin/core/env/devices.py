"""Which torch device a model runs on: one rule for captioners, embedders and the CLIP baseline."""

from __future__ import annotations

from ..errors import EngineError


def resolve_device(device: str = "auto") -> str:
    """'auto' -> cuda, then mps, then cpu; an explicit device is checked to exist.

    Asking for CUDA on a machine without it is a user error with a one-line fix, not a torch
    traceback deep inside a model load.
    """
    import torch

    dev = (device or "auto").lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if dev == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_ok else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} asked for but CUDA is not available here; use device 'auto' or 'cpu'")
    if dev == "mps" and not mps_ok:
        raise EngineError("device 'mps' asked for but Apple MPS is not available here; use 'auto' or 'cpu'")
    return dev
