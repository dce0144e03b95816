"""Bad rows: header-only size checks, decode failures by reason, and the counter's arithmetic."""

import pickle

import pytest
from conftest import jpeg, png_header_only

from tipslab.jobs.data.shards.rows import (
    BadRow,
    BadRows,
    TooManyBadRows,
    check_caption,
    check_key,
    decode_image,
    image_size,
)


def reason(fn, *args):
    with pytest.raises(BadRow) as err:
        fn(*args)
    return err.value.reason


def test_image_size_reads_the_header_and_decode_checks_it_first():
    assert image_size(jpeg(64, 48), "a") == (64, 48)
    assert decode_image(jpeg(64, 48), "a", 64 * 48).size == (64, 48)
    huge = png_header_only(8000, 8000)
    assert image_size(huge, "huge") == (8000, 8000)
    err = pytest.raises(BadRow, decode_image, huge, "huge", 40_000_000).value
    assert (err.key, err.reason) == ("huge", "too_many_pixels")
    # The same bytes under a bound they satisfy are decoded, and fail as the truncated data they are.
    assert reason(decode_image, png_header_only(100, 100), "small", 10**6) == "truncated"


@pytest.mark.parametrize(
    "data,why",
    [
        (b"this is not an image", "not_an_image"),
        (b"", "not_an_image"),
        ("a string", "wrong_type"),
    ],
)
def test_non_images_are_named(data, why):
    assert reason(image_size, data, "k") == why


def test_truncated_jpeg_fails_its_decode():
    data = jpeg(256, 256)
    assert reason(decode_image, data[: len(data) * 2 // 3], "cut", 10**6) == "truncated"


def test_captions_and_keys():
    assert check_caption("  a red cube ", "k", "web_caption") == "a red cube"
    assert check_caption(None, "k", "web_caption") is None
    assert reason(check_caption, "   ", "k", "web_caption") == "empty_caption"
    assert reason(check_caption, 3, "k", "web_caption") == "wrong_type"
    assert check_key(7, "row 1") == "7"
    assert reason(check_key, "", "row 2") == "missing_key"
    assert reason(check_key, [1], "row 3") == "wrong_type"


def test_counts_merge_and_the_bad_fraction_stop():
    a, b = BadRows(), BadRows()
    a.seen(10)
    a.add(BadRow("k1", "truncated"))
    b.seen(15)
    for i in range(3):
        b.add(BadRow(f"k{i + 2}", "not_an_image"))
    a.check(0.05)  # 10 rows: too few to judge
    total = BadRows.from_dict(pickle.loads(pickle.dumps(a.to_dict()))).merge(b)
    assert total.to_dict() == {
        "rows_seen": 25,
        "bad": 4,
        "counts": {"not_an_image": 3, "truncated": 1},
        "keys": ["k1", "k2", "k3", "k4"],
        "examples": ["k1: truncated", "k2: not_an_image", "k3: not_an_image", "k4: not_an_image"],
    }
    total.check(0.2)  # 4/25 = 0.16
    with pytest.raises(TooManyBadRows) as err:
        total.check(0.1)
    assert err.value.counts == {"not_an_image": 3, "truncated": 1}
    assert "k1" in str(err.value) and "4 bad of 25" in str(err.value)
    few = BadRows()
    few.seen(3)
    few.add(BadRow("x", "empty_caption"))
    few.check(0.05)
    with pytest.raises(TooManyBadRows):
        few.check(0.05, final=True)
