"""Geometry operations on point clouds (NumPy / PyTorch): neighbour search, subsampling and
FPS, geometric feature mining, a ground model, rasters and voxel grids.

They take and return arrays; file I/O, the point-cloud container and class maps live in
``data``.
"""
