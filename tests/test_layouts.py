"""Output layouts and the ASPRS vegetation split, against a direct per-point rule."""
from __future__ import annotations

import numpy as np
import pytest

from data.classmap import ClassMap
from data.errors import DataError, UserError
from data.io import read_cloud, write_cloud
from geometry.heights import height_above_ground
from pipeline.layouts import check_vegetation_heights
from pipeline.labelling import OutputOptions, labelled_cloud

CMAP = ClassMap.from_config({"ground": [2], "vegetation": [3, 4, 5], "building": [6], "other": [1]})
TILE = "ign_lidarhd/test/test_data_77055_627760_LA93_IGN69.laz"


@pytest.fixture(scope="module")
def cloud_and_proba(lidar_data):
    cloud = read_cloud(lidar_data / TILE)
    ref = CMAP.encode(cloud.fields["classification"])
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(CMAP.num_classes), len(cloud)).astype(np.float32)
    proba[ref >= 0, ref[ref >= 0]] += 2.0           # the reference class wins where there is one
    return cloud, proba / proba.sum(1, keepdims=True)


def test_vegetation_split_matches_a_per_point_rule(cloud_and_proba, tmp_path):
    cloud, proba = cloud_and_proba
    out, _ = labelled_cloud(cloud, proba, CMAP, OutputOptions(vegetation_heights=(0.5, 2.0)))
    hag = height_above_ground(cloud.xyz)
    pred = proba.argmax(1)
    codes = out.fields["classification"]
    for i in np.random.default_rng(1).choice(len(cloud), 3000, replace=False):
        if CMAP.names[pred[i]] == "vegetation":
            want = 3 if hag[i] < 0.5 else 4 if hag[i] < 2.0 else 5
        else:
            want = CMAP.codes[pred[i]][0]
        assert codes[i] == want, i
    veg = pred == CMAP.names.index("vegetation")
    assert {3, 4, 5} <= set(np.unique(codes[veg]).tolist())
    write_cloud(out, tmp_path / "split.laz")
    # read back with the class map: every split code is still vegetation
    again = CMAP.encode(read_cloud(tmp_path / "split.laz").fields["classification"])
    np.testing.assert_array_equal(again, pred)


def test_myria3d_layout_fields(cloud_and_proba):
    cloud, proba = cloud_and_proba
    out, extras = labelled_cloud(cloud, proba, CMAP, OutputOptions(layout="myria3d"))
    np.testing.assert_array_equal(out.fields["classification"], cloud.fields["classification"])
    assert list(extras) == ["entropy", "PredictedClassification", *CMAP.names]
    np.testing.assert_array_equal(extras["PredictedClassification"], CMAP.decode(proba.argmax(1)))
    np.testing.assert_array_equal(extras["vegetation"], proba[:, 1])
    p = proba.astype(np.float64)
    np.testing.assert_allclose(extras["entropy"], -(p * np.log(p)).sum(1), rtol=1e-5)
    plain, plain_extras = labelled_cloud(cloud, proba, CMAP)
    assert list(plain_extras) == ["confidence", "entropy", "classification_ref"]


def test_bad_options_are_refused(cloud_and_proba):
    cloud, proba = cloud_and_proba
    for bad in ([1.0], [2.0, 1.0], [0.0, 1.0], ["a", 1], [1.0, float("nan")]):
        with pytest.raises(UserError, match="key: expected"):
            check_vegetation_heights(bad, CMAP, "key")
    no_veg = ClassMap.from_config({"ground": [2], "trees": [5]})
    with pytest.raises(UserError, match="no class holding the ASPRS vegetation codes"):
        check_vegetation_heights([0.5, 2.0], no_veg, "key")
    clash = ClassMap.from_config({"ground": [2], "intensity": [3, 4, 5]})
    with pytest.raises(DataError, match="class 'intensity': its probability dimension 'intensity' would replace"):
        labelled_cloud(cloud, proba[:, :2] / proba[:, :2].sum(1, keepdims=True), clash,
                       OutputOptions(layout="myria3d"))
