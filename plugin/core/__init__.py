"""The engine: rasters -> tiles -> structured captions -> text index -> ranked tiles.

Imports no Qt or QGIS so that it runs inside QGIS, in a worker process, or on a GPU server.
"""
