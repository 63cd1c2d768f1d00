"""The engine process QGIS drives (`python -m plugin worker`) and the Qt-free client that drives it."""
