"""Errors the engine raises on purpose: each carries a one-line message a user can act on.

The CLI prints `str(error)` and exits non-zero; the QGIS tasks show it in the message bar. Anything
else escaping the engine is a bug and is reported with its traceback.
"""


import os

#: The environment variables that keep the Hugging Face hub from being contacted.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_offline() -> bool:
    """The one rule for "offline": HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE set to 1 / true / yes / on."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_VARIABLES)


def first_line(error: object, limit: int = 300) -> str:
    """An error's (or a text's) first non-empty line, for the status bar; its type name when empty.

    The full text stays with the caller for the log and a "details" view."""
    lines = [ln.strip() for ln in str(error or "").splitlines() if ln.strip()]
    if lines:
        return lines[0][:limit]
    return type(error).__name__ if isinstance(error, BaseException) else "unknown error"


class EngineError(Exception):
    """A problem with the user's input or environment, described in one line."""


class RasterError(EngineError):
    """A raster cannot be opened or read, or its band map does not fit it."""


class ModelUnavailableError(EngineError):
    """A captioner or embedder model cannot be loaded (not downloaded, offline, wrong path)."""


class IndexStoreError(EngineError):
    """The index folder is missing, belongs to another embedder, or is damaged beyond repair."""


class QueryError(EngineError):
    """A query that cannot be searched (empty, whitespace only)."""


class CaptionerError(EngineError):
    """A captioner backend failed (server refused the request, bad response)."""


class Canceled(Exception):
    """Raised inside long jobs when is_canceled() turns true; work committed so far stays."""


class TilingError(EngineError):
    """Tiling parameters that cannot work (tile size, overlap, scales, ground units without a CRS)."""


class IndexBusyError(IndexStoreError):
    """Another job holds the index's writer lock (the message names it)."""


class DiskFullError(IndexStoreError):
    """The disk holding the index is full (the message names the folder and the space needed)."""


class PlanTooLargeError(TilingError):
    """A tiling plan past the tile limit (the message gives the count and a smaller setting; force insists)."""


class CaptionFallbackError(CaptionerError):
    """Most caption answers were unusable and fell back to spectral captions: the job stopped."""


class IndexMissingError(IndexStoreError):
    """There is no index at that folder (yet: a first job may be creating it)."""
