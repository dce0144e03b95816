"""Bad rows: how one row of data is checked, and how the bad ones are counted.

Wherever data is met (ingestion, ``tipslab data check``, the training views), a row that cannot be
used is skipped, named by its key and counted by reason; past a bad-row fraction the job stops.
A ``BadRow`` is the one exception type for "this row is unusable"; ``BadRows`` is the counter that
parallel workers fill and the driver sums with ``merge``.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageFile, UnidentifiedImageError

from tipslab.models.errors import DataError

# Pillow's own decompression-bomb guard would warn at ~89 Mpx and raise at twice that, before and
# instead of ours. ``image_size`` applies the configured bound from the header, so turn Pillow's off.
Image.MAX_IMAGE_PIXELS = None
# A truncated image must fail its decode, not come back with grey bottom rows.
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: The encodings a shard's ``image`` column may hold; anything else is ``not_an_image``.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

#: A job is not stopped by the bad fraction before this many rows were seen (one bad row among
#: the first three is not a 33% failure rate), except by the final check at its end.
MIN_ROWS_BEFORE_STOP = 20
#: How many bad keys a counter keeps to name in messages.
KEPT_KEYS = 20


class BadRow(ValueError):
    """One row that cannot be used: ``key`` names it, ``reason`` is a short snake_case word."""

    def __init__(self, key: str, reason: str, detail: str = ""):
        self.key, self.reason, self.detail = key, reason, detail
        super().__init__(f"bad row {key!r}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # picklable across Ray workers with its fields
        return (BadRow, (self.key, self.reason, self.detail))


class TooManyBadRows(DataError):
    """More rows than the configured fraction were bad: the job stops with counts and examples."""

    def __init__(self, message: str, counts: dict[str, int], keys: list[str]):
        self.counts, self.keys = dict(counts), list(keys)
        super().__init__(message)

    def __reduce__(self):
        return (TooManyBadRows, (str(self), self.counts, self.keys))


# --------------------------------------------------------------------------- images


def _open(data, key: str) -> Image.Image:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadRow(key, "wrong_type", f"image is a {type(data).__name__}, expected bytes")
    if len(data) == 0:
        raise BadRow(key, "not_an_image", "0 bytes")
    try:
        return Image.open(io.BytesIO(bytes(data)), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise BadRow(key, "not_an_image", f"{len(data)} bytes of no known image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
        # Pillow met the end of the bytes, or garbage, while still reading the header.
        raise BadRow(key, "truncated", f"header unreadable: {err}") from None


def image_size(data: bytes, key: str) -> tuple[int, int]:
    """(width, height) from the image header alone; the pixels are never decoded."""
    with _open(data, key) as img:
        width, height = img.size
    if width <= 0 or height <= 0:
        raise BadRow(key, "not_an_image", f"header declares {width}x{height}")
    return width, height


def check_pixels(width: int, height: int, key: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise BadRow(key, "too_many_pixels", f"{width}x{height} > {max_pixels} pixels")


def _decode(data, key: str, max_pixels: int, rgb: bool):
    width, height = image_size(data, key)
    check_pixels(width, height, key, max_pixels)
    try:
        with Image.open(io.BytesIO(bytes(data)), formats=IMAGE_FORMATS) as img:
            img.load()
            return img.convert("RGB") if rgb else (width, height)
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
        raise BadRow(key, "truncated", f"cannot decode: {err}") from None


def decode_image(data: bytes, key: str, max_pixels: int) -> Image.Image:
    """The image as RGB; its header's size is checked against ``max_pixels`` before any decoding."""
    return _decode(data, key, max_pixels, rgb=True)


def verify_image(data: bytes, key: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the header, after checking the bound and that every pixel decodes."""
    return _decode(data, key, max_pixels, rgb=False)


# --------------------------------------------------------------------------- other columns


def check_key(value, where: str) -> str:
    """A row's key: a non-empty string. ``where`` names the row when the key itself is bad."""
    if isinstance(value, (int,)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise BadRow(where, "wrong_type", f"key is a {type(value).__name__}, expected a string")
    if not value.strip():
        raise BadRow(where, "missing_key")
    return value.strip()


def check_caption(value, key: str, column: str) -> str | None:
    """A caption stripped of surrounding space; None when absent. An empty string is a bad row."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):  # pandas-style missing cell
        return None
    if not isinstance(value, str):
        raise BadRow(key, "wrong_type", f"{column} is a {type(value).__name__}, expected a string")
    text = value.strip()
    if not text:
        raise BadRow(key, "empty_caption", column)
    return text


def check_tags(value, key: str) -> list[str]:
    """A row's tags: a list of strings (None reads as no tags)."""
    if value is None:
        return []
    if hasattr(value, "tolist"):  # Ray Data's numpy batches hold lists as arrays
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise BadRow(key, "wrong_type", "tags must be a list of strings")
    return list(value)


# --------------------------------------------------------------------------- counting


class BadRows:
    """Counts of bad rows by reason among the rows seen, plus the first few keys to name.

    ``seen(n)`` counts every row looked at, good or bad; ``add(err)`` records that one of them was
    bad. Workers each fill their own counter and the driver sums them with ``merge``. ``keys``
    and ``examples`` ("key: reason (detail)") keep the first ``KEPT_KEYS`` bad rows.
    """

    def __init__(self):
        self.rows_seen = 0
        self.counts: dict[str, int] = {}
        self.keys: list[str] = []
        self.examples: list[str] = []

    @property
    def bad(self) -> int:
        return sum(self.counts.values())

    def seen(self, n: int = 1) -> None:
        self.rows_seen += n

    def add(self, err: BadRow) -> None:
        self.counts[err.reason] = self.counts.get(err.reason, 0) + 1
        if len(self.keys) < KEPT_KEYS:
            self.keys.append(err.key)
            self.examples.append(f"{err.key}: {err.reason}" + (f" ({err.detail})" if err.detail else ""))

    def merge(self, other: BadRows) -> BadRows:
        self.rows_seen += other.rows_seen
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
        room = max(KEPT_KEYS - len(self.keys), 0)
        self.keys.extend(other.keys[:room])
        self.examples.extend(other.examples[:room])
        return self

    def fraction(self) -> float:
        seen = max(self.rows_seen, self.bad)  # a caller that forgot seen() for bad rows
        return self.bad / seen if seen else 0.0

    def to_dict(self) -> dict:
        return {
            "rows_seen": self.rows_seen,
            "bad": self.bad,
            "counts": dict(sorted(self.counts.items())),
            "keys": list(self.keys),
            "examples": list(self.examples),
        }

    @classmethod
    def from_dict(cls, d: dict) -> BadRows:
        out = cls()
        out.rows_seen = int(d.get("rows_seen", 0))
        out.counts = {str(k): int(v) for k, v in d.get("counts", {}).items()}
        out.keys = [str(k) for k in d.get("keys", [])][:KEPT_KEYS]
        out.examples = [str(k) for k in d.get("examples", [])][:KEPT_KEYS]
        return out

    def summary(self) -> str:
        if not self.counts:
            return f"no bad rows among {self.rows_seen}"
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.counts.items()))
        return (
            f"{self.bad} bad of {self.rows_seen} rows ({reasons}); "
            f"first keys: {', '.join(repr(k) for k in self.keys[:5])}"
        )

    def check(self, max_fraction: float, *, final: bool = False) -> None:
        """Raise ``TooManyBadRows`` when bad/seen exceeds ``max_fraction``.

        Before ``MIN_ROWS_BEFORE_STOP`` rows the check passes, unless ``final`` (the job's last
        check, over all its rows) is set.
        """
        if not self.counts or (self.rows_seen < MIN_ROWS_BEFORE_STOP and not final):
            return
        if self.fraction() > max_fraction:
            raise TooManyBadRows(
                f"too many bad rows: {self.summary()}; the limit is a fraction of "
                f"{max_fraction:g} (data.max_bad_fraction / --max-bad-fraction)",
                self.counts,
                self.keys,
            )
