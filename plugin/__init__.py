"""Plugin package: `core` is the engine (no Qt/QGIS); the other packages wrap it for QGIS."""
