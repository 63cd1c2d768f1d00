"""Rasters and their tile grid: opening files, URLs and VRTs, pixel reads, ground sizes, tiling."""
