"""qgis.core only: layers -> raster sources, project -> index folder, hits -> features."""
