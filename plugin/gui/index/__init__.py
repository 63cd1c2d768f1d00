"""The Index panel: raster layers, captioner/tiling options, the tiling hint, job progress, its controller."""
