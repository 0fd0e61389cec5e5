"""Bad input gives a DataError naming the file, never a crash or a deep traceback.

Corrupt LAS/LAZ files are read in a child Python process, so a decoder abort (SIGABRT /
segfault) fails the test instead of killing pytest.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA

from data.atomic import atomic_path
from data.errors import DataError
from data.io import read_cloud, read_header_info, write_cloud
from data.pointcloud import PointCloud

REPO = Path(__file__).resolve().parents[1]
LAZ = DATA / "ign_lidarhd/test/test_data_77050_627760_LA93_IGN69.laz"
LAZ_FMT1 = DATA / "ign_lidarhd/train/St_Barth_RGAF09_UTM20N_IGN_1988_SB_subset_100m.laz"
needs_data = pytest.mark.usefixtures("lidar_data")  # fails (not skips) without the data

_CHILD = r"""
import json, sys
from data.io import read_cloud
from data.errors import DataError
for path in sys.argv[1:]:
    try:
        n = len(read_cloud(path))
        print(json.dumps(["ok", path, n]), flush=True)
    except DataError as e:
        print(json.dumps(["error", path, str(e)]), flush=True)
"""


def read_in_child(paths: list[Path]) -> list[tuple[str, str, object]]:
    """read_cloud each path in one child process; a crash fails the calling test."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, *map(str, paths)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"reader process died ({proc.returncode}): {proc.stderr[-2000:]}"
    results = [tuple(json.loads(line)) for line in proc.stdout.splitlines()]
    assert len(results) == len(paths)
    return results


def assert_all_data_errors(paths: list[Path]) -> list[str]:
    messages = []
    for kind, path, msg in read_in_child(paths):
        assert kind == "error", f"{path} was read without error"
        assert msg.startswith(path), msg
        messages.append(msg)
    return messages


@needs_data
@pytest.mark.parametrize("src", [LAZ, LAZ_FMT1], ids=["fmt8", "fmt1"])
def test_truncated_laz(src: Path, tmp_path: Path) -> None:
    data = src.read_bytes()
    paths = []
    for frac in (0.0005, 0.005, 0.01, 0.3, 0.6, 0.9, 0.999):
        p = tmp_path / f"trunc_{frac}.laz"
        p.write_bytes(data[: int(len(data) * frac)])
        paths.append(p)
    messages = assert_all_data_errors(paths)
    assert any("truncated" in m for m in messages)


@needs_data
def test_chunk_table_corruption_is_guarded(tmp_path: Path) -> None:
    """laspy/lazrs abort the process on these; we must answer with a DataError."""
    data = LAZ.read_bytes()
    start = struct.unpack_from("<I", data, 96)[0]
    table = struct.unpack_from("<q", data, start)[0]
    cases = {}
    for n in (0xFFFFFFFF, 2 ** 31, 10 ** 8):              # absurd number of chunks
        b = bytearray(data)
        b[table + 4: table + 8] = struct.pack("<I", n)
        cases[f"nchunks_{n}"] = b
    b = bytearray(data)
    b[table + 8: table + 40] = b"\xff" * 32                # garbage chunk entries
    cases["entries"] = b
    b = bytearray(data)
    b[start: start + 8] = struct.pack("<q", 2 ** 40)        # chunk table offset beyond EOF
    cases["offset"] = b
    b = bytearray(data)                                     # corrupt layer sizes of chunk 1
    b[start + 8 + 38 + 4: start + 8 + 38 + 12] = b"\xff" * 8
    cases["layers"] = b
    paths = []
    for name, payload in cases.items():
        p = tmp_path / f"{name}.laz"
        p.write_bytes(bytes(payload))
        paths.append(p)
    messages = assert_all_data_errors(paths)
    assert "crashed" in messages[0] or "chunk" in messages[0]


@needs_data
@pytest.mark.parametrize("src", [LAZ, LAZ_FMT1], ids=["fmt8", "fmt1"])
def test_flipped_bytes_never_crash(src: Path, tmp_path: Path) -> None:
    """LAZ has no checksums: flipped bytes give a DataError or (undetectable) garbage values
    with the right point count, never a crash."""
    data = src.read_bytes()
    rng = np.random.default_rng(0)
    paths = []
    for i, frac in enumerate((0.1, 0.3, 0.5, 0.7, 0.9, 0.95)):
        b = bytearray(data)
        at = int(len(data) * frac)
        b[at: at + 32] = rng.integers(0, 256, 32, dtype=np.uint8).tobytes()
        p = tmp_path / f"flip_{i}.laz"
        p.write_bytes(bytes(b))
        paths.append(p)
    n = read_header_info(src).point_count
    for kind, path, value in read_in_child(paths):
        if kind == "ok":
            assert value == n
        else:
            assert value.startswith(path)


def test_garbage_and_wrong_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    garbage = tmp_path / "garbage.laz"
    garbage.write_bytes(rng.integers(0, 256, 10000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.las"
    empty.write_bytes(b"")
    text = tmp_path / "text.ply"
    text.write_text("hello\n")
    fake_header = tmp_path / "fake.laz"
    fake_header.write_bytes(b"LASF" + bytes(rng.integers(0, 256, 400, dtype=np.uint8)))
    messages = assert_all_data_errors([garbage, empty, text, fake_header])
    assert "not a LAS/LAZ file" in messages[0] and "not a PLY file" in messages[2]


@needs_data
def test_las_with_too_many_points_in_header(tmp_path: Path) -> None:
    cloud = read_cloud(LAZ)
    las = tmp_path / "big.las"
    write_cloud(cloud, las)
    b = bytearray(las.read_bytes())
    b[247:255] = struct.pack("<Q", len(cloud) + 1000)      # LAS 1.4 64-bit point count
    las.write_bytes(bytes(b))
    laz = tmp_path / "big.laz"
    write_cloud(cloud, laz)
    c = bytearray(laz.read_bytes())
    c[247:255] = struct.pack("<Q", len(cloud) * 3)
    laz.write_bytes(bytes(c))
    messages = assert_all_data_errors([las, laz])
    assert "header says" in messages[0]
    with pytest.raises(DataError, match="big.las"):
        read_header_info(las)


@pytest.mark.parametrize("offset, value, words", [
    (131, 1e300, "header x scale 1e+300 / offset 0.0 allow coordinates up to inf"),
    (139, 1e200, "header y scale 1e+200"),
    (171, 1e300, "header z scale 0.01 / offset 1e+300"),
])
@needs_data
def test_header_scales_that_break_coordinates(tmp_path: Path, offset: int, value: float, words: str) -> None:
    """A scale or offset that puts coordinates at infinity or beyond any coordinate system is a
    broken header, named as such (not an overflow deep in the grids)."""
    b = bytearray(LAZ.read_bytes())
    struct.pack_into("<d", b, offset, value)
    bad = tmp_path / "scaled.laz"
    bad.write_bytes(bytes(b))
    for read in (read_header_info, read_cloud):
        with pytest.raises(DataError, match=r"scaled.laz: " + words.replace("+", r"\+").replace(".", r"\.")):
            read(bad)


def test_missing_file_and_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.laz: file not found"):
        read_cloud(tmp_path / "nope.laz")
    with pytest.raises(DataError, match="nope.ply: file not found"):
        read_cloud(tmp_path / "nope.ply")
    with pytest.raises(DataError, match=r"x\.txt.*suffix"):
        read_cloud(tmp_path / "x.txt")
    with pytest.raises(DataError, match="does not exist"):
        write_cloud(PointCloud(np.zeros((2, 3))), tmp_path / "no_dir" / "a.laz")


def test_zero_points(tmp_path: Path) -> None:
    import laspy
    las = laspy.LasData(laspy.LasHeader(point_format=6, version="1.4"))
    las.write(tmp_path / "zero.laz")
    las.write(tmp_path / "zero.las")
    (tmp_path / "zero.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\n"
                                       "property float x\nproperty float y\nproperty float z\nend_header\n")
    for name in ("zero.laz", "zero.las", "zero.ply"):
        with pytest.raises(DataError, match=f"{name}: .*no points"):
            read_cloud(tmp_path / name)


def test_ply_errors(tmp_path: Path) -> None:
    noxyz = tmp_path / "noxyz.ply"
    noxyz.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float a\n"
                     "property float b\nend_header\n1 2\n3 4\n")
    with pytest.raises(DataError, match="noxyz.ply: PLY vertex element has no x/y/z"):
        read_cloud(noxyz)
    nan = tmp_path / "nan.ply"
    nan.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty double x\nproperty double y\n"
                   "property double z\nend_header\n1 2 3\nnan 2 3\n1 inf 3\n")
    with pytest.raises(DataError, match="nan.ply: 2 of 3 points have NaN/inf"):
        read_cloud(nan)
    short = tmp_path / "short.ply"
    header = b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\n" \
             b"property float y\nproperty float z\nend_header\n"
    short.write_bytes(header + np.zeros(25, "<f4").tobytes())
    with pytest.raises(DataError, match="short.ply: truncated PLY: header says 10 vertices but the file holds 8"):
        read_cloud(short)
    noend = tmp_path / "noend.ply"
    noend.write_text("ply\nformat ascii 1.0\nelement vertex 1\n")
    with pytest.raises(DataError, match="noend.ply: truncated PLY header"):
        read_cloud(noend)
    bad = tmp_path / "bad.ply"
    bad.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                   "property float z\nend_header\n1 2 3\n4 5\n")
    with pytest.raises(DataError, match="bad.ply: truncated or malformed"):
        read_cloud(bad)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "out.laz"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half a file")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    # an existing file survives a failed overwrite
    good = PointCloud(np.zeros((2, 3)) + 10, {"intensity": np.array([1, 2], np.uint16)})
    write_cloud(good, out)
    before = out.read_bytes()
    bad = PointCloud(np.zeros((2, 3)) + 10, {"intensity": np.array([1, 2], np.uint16)})
    with pytest.raises(DataError, match="intensity"):
        write_cloud(bad, out, extra={"intensity": np.array([-1, 2])})
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.laz"]
    # failure inside the LAS writer itself (object dtype extra) also leaves nothing behind
    with pytest.raises(DataError):
        write_cloud(good, tmp_path / "x.ply", extra={"s": np.array(["a", "b"], dtype=object)})
    assert [p.name for p in tmp_path.iterdir()] == ["out.laz"]


@pytest.mark.parametrize("length", [5, 251])
def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path: Path, length: int) -> None:
    """What a writer killed inside atomic_path leaves (its temporary, named as atomic_path
    names it, long names shortened) is removed for that output only."""
    import os
    import signal

    from data.atomic import remove_stale_temporaries

    final = tmp_path / ("t" * length + ".laz")
    other = tmp_path / "other.laz"
    for target in (final, other):
        pid = os.fork()
        if pid == 0:                                   # the child dies inside atomic_path
            with atomic_path(target) as tmp:
                Path(tmp).write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
        os.waitpid(pid, 0)
    assert len(list(tmp_path.iterdir())) == 2 and not final.exists()
    remove_stale_temporaries(final)
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and left[0].name.startswith(".other.laz.")
