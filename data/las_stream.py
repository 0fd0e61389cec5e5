"""A LAS/LAZ file read a chunk of point records at a time, for passes over tiles too large to
hold in memory (``pipeline.windows``)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterator

import laspy
import numpy as np

from .errors import DataError
from .las import _coordinates, _laspy_point_format, _meta_for, _open_checked, _unpack_fields
from .las_header import _check_layout, _read_evlrs
from .pointcloud import PointCloud


class LasChunks:
    """A LAS/LAZ file read a chunk of point records at a time (bounded memory), for passes
    over a tile too large to hold: ``for start, records in chunks.records(n)``, and
    ``chunks.cloud(records)`` -> the records as a :class:`PointCloud` (file's meta, the records'
    own raw X/Y/Z). ``problems``: what the LAZ guard found (non-empty: decode the file whole
    with :func:`read_las`, whose child process survives a decoder abort)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        f, h = _open_checked(self.path)
        with f:
            if h.point_count == 0:
                raise DataError(self.path, f"{'LAZ' if h.compressed else 'LAS'} file has no points")
            self.problems = _check_layout(self.path, f, h)
            self.evlrs = _read_evlrs(self.path, f, h)
            self.point_format = _laspy_point_format(self.path, f)
        self.header, self.point_count = h, h.point_count
        self.meta = _meta_for(h, self.point_format, self.evlrs, None)

    def records(self, points: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(index of the first point, structured records [n])`` chunks of up to ``points``, in file order."""
        if self.problems:
            raise DataError(self.path, f"corrupt LAZ ({'; '.join(self.problems)}): not read chunk by chunk")
        start = 0
        try:
            with laspy.open(self.path) as reader:
                for chunk in reader.chunk_iterator(points):
                    arr = chunk.array
                    yield start, arr
                    start += len(arr)
        except DataError:
            raise
        except BaseException as e:  # includes lazrs' PanicException
            if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            raise DataError(self.path, f"corrupt or truncated point data: {type(e).__name__}: {e}") from None
        if start != self.point_count:
            raise DataError(self.path, f"truncated or corrupt: decoded {start} points, header says {self.point_count}")

    def xyz(self, records: np.ndarray) -> np.ndarray:
        """``[n, 3]`` float64 coordinates of ``records``."""
        return _coordinates(records, self.header.scales, self.header.offsets)[1]

    def cloud(self, records: np.ndarray) -> PointCloud:
        raw_xyz, xyz = _coordinates(records, self.header.scales, self.header.offsets)
        meta = dataclasses.replace(self.meta, raw_xyz=raw_xyz)      # the file's, parsed once
        return PointCloud(xyz, _unpack_fields(records, self.point_format), meta, str(self.path))
