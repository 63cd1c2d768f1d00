"""One place that tells the user what went wrong: one line in the message bar, details in the log."""

from __future__ import annotations

import traceback
from typing import Optional

from qgis.core import Qgis, QgsMessageLog

from ..core.errors import first_line as core_first_line

LOG_TAG = "Semantic Imagery Search"
TITLE = "Semantic Imagery Search"


def first_line(text: str) -> str:
    return core_first_line(text)


def log(message: str, level=Qgis.Info) -> None:
    QgsMessageLog.logMessage(str(message), LOG_TAG, level)


def report_error(iface, message: str, details: Optional[str] = None) -> None:
    """Message bar gets the first line; the QGIS log gets everything (and the traceback if any)."""
    line = first_line(message)
    QgsMessageLog.logMessage(f"{message}\n{details}" if details else str(message), LOG_TAG, Qgis.Critical)
    try:
        iface.messageBar().pushMessage(TITLE, line, Qgis.Critical, 8)
    except Exception:  # the message bar may be gone while QGIS closes; the log still has it
        pass


def report_exception(iface, exc: BaseException, context: str = "") -> None:
    prefix = f"{context}: " if context else ""
    report_error(iface, prefix + first_line(str(exc) or type(exc).__name__), "".join(traceback.format_exception(exc)))


def report_info(iface, message: str, level=Qgis.Info, duration: int = 5) -> None:
    QgsMessageLog.logMessage(str(message), LOG_TAG, level)
    try:
        iface.messageBar().pushMessage(TITLE, first_line(message), level, duration)
    except Exception:
        pass


def job_outcome(report: dict) -> str:
    """One line about a finished indexing job, in the user's terms: what was captioned, what was
    already there ("0 cached" for 320 tiles already indexed said nothing)."""
    rasters = [r for r in (report.get("rasters") or []) if not r.get("error")]
    new = sum(int(r.get("tiles_new", 0)) for r in rasters)
    cached = sum(int(r.get("tiles_cached", 0)) for r in rasters)
    empty = sum(int(r.get("tiles_empty", 0)) for r in rasters)
    planned = sum(int(r.get("tiles_planned", 0)) for r in rasters)
    already = max(0, planned - new - cached - empty - sum(int(r.get("tiles_failed") or 0) for r in rasters))
    parts = []
    if new:
        parts.append(f"{new:,} tile{'' if new == 1 else 's'} captioned")
    if cached:
        parts.append(f"{cached:,} re-embedded from cached captions")
    if already:
        parts.append(f"{already:,} already indexed")
    if empty:
        parts.append(f"{empty:,} empty skipped")
    what = ", ".join(parts) if (new or cached) else ("nothing to do: " + ", ".join(parts) if parts else "nothing to do")
    n = len(rasters)
    removed = len(report.get("removed") or [])
    text = f"{n} raster{'' if n == 1 else 's'}: {what}" + (f", {removed} removed" if removed else "")
    return text + f" in {float(report.get('seconds', 0.0)):.1f} s"
