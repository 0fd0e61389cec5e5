import numpy as np
import pytest

from data.classmap import IGNORE, ClassMap
from data.errors import DataError, UserError

IGN = {"ground": [2], "vegetation": [3, 4, 5], "building": [6], "water": [9], "bridge": [17], "other": [1, 64, 67]}


def test_encode_decode_roundtrip_and_ignore():
    cm = ClassMap.from_config(IGN, [7, 65, 66])
    codes = np.array([2, 3, 4, 5, 6, 9, 17, 1, 64, 67, 7, 65, 66], dtype=np.uint8)
    labels = cm.encode(codes, "x.laz")
    assert labels.tolist() == [0, 1, 1, 1, 2, 3, 4, 5, 5, 5, IGNORE, IGNORE, IGNORE]
    assert cm.decode(labels[:10]).tolist() == [2, 3, 3, 3, 6, 9, 17, 1, 1, 1]
    assert cm.num_classes == 6 and cm.names[0] == "ground"
    assert ClassMap.from_config(**cm.to_config()) == cm


def test_unknown_code_names_file_code_and_count():
    cm = ClassMap.from_config(IGN, [7])
    with pytest.raises(DataError) as exc:
        cm.encode(np.array([2, 8, 8, 42]), "tile.laz")
    msg = str(exc.value)
    assert "tile.laz" in msg and "8 (2 points)" in msg and "42 (1 points)" in msg


@pytest.mark.parametrize("classes,ignore,needle", [
    ({"a": [1], "b": [1]}, [], "code 1 is in both"),
    ({"a": [1]}, [1], "both ignored and in class"),
    ({"a": []}, [], "has no input codes"),
    ({"a": [-3]}, [], "outside"),
])
def test_bad_class_maps(classes, ignore, needle):
    with pytest.raises(UserError, match=needle):
        ClassMap.from_config(classes, ignore)


def test_canonical_codes_for_pictures():
    cmap = ClassMap.from_config({"ground": [2], "vegetation": [3, 4, 5]}, [7])
    assert cmap.canonical(np.array([2, 3, 4, 5, 7, 9])).tolist() == [2, 3, 3, 3, 7, 9]


def test_ambiguous_codes_are_sets_of_classes():
    """A code that may mean several classes in one survey: never a label (IGNORE: not scored,
    the forest drops it), but a candidate set for the partial-label loss."""
    import numpy as np

    from data.classmap import IGNORE, ClassMap
    from data.errors import UserError

    base = ClassMap.from_config({"ground": [2], "vegetation": [3, 4, 5], "building": [6], "other": [1, 64]}, [7])
    m = base.with_overrides(ignore=[26], ambiguous={1: ["vegetation", "other"]})
    np.testing.assert_array_equal(m.encode(np.array([1, 2, 3, 26, 64])), [IGNORE, 0, 1, IGNORE, 3])
    cand = m.candidates(np.array([1, 2, 1]))
    np.testing.assert_array_equal(cand, [[False, True, False, True], [False] * 4, [False, True, False, True]])
    assert base.candidates(np.array([1])) is None and m != base
    with pytest.raises(UserError, match=r"ambiguous.1.vegetaton: not a class.*did you mean 'vegetation'"):
        base.with_overrides(ambiguous={1: ["vegetaton", "other"]})
    with pytest.raises(UserError, match="ambiguous.1: give two or more classes"):
        base.with_overrides(ambiguous={1: ["other"]})
    with pytest.raises(UserError, match=r"\[1\] are ambiguous and also moved or ignored"):
        base.with_overrides(ignore=[1], ambiguous={1: ["vegetation", "other"]})
