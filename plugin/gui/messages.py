"""One place that tells the user what went wrong: one line in the message bar, details in the log."""

from __future__ import annotations

import traceback
from typing import Optional

from qgis.core import Qgis, QgsMessageLog

LOG_TAG = "Semantic Imagery Search"
TITLE = "Semantic Imagery Search"


def first_line(text: str) -> str:
    text = str(text or "").strip()
    return text.splitlines()[0][:300] if text else "unknown error"


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
