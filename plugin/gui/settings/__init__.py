"""Settings: defaults kept in QgsSettings, the settings dialog, where indexing runs, the engine dialog."""
