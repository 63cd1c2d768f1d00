"""The dock, its panels and their controllers (Qt/QGIS GUI side of the plugin)."""
