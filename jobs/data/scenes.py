"""Procedural scenes with exact dense ground truth: Kubric's idea without a renderer.

Each scene is a smooth, slightly noisy background plane at ``BACKGROUND_DEPTH`` metres with 1 to
``max_objects`` flat coloured shapes (circle, square, triangle), each at its own depth in
``DEPTH_RANGE`` and painted far-to-near so nearer shapes occlude farther ones. Everything,
captions included, is a pure function of the seed. Per scene we return the RGB image, per-pixel
class ids, per-pixel depth, an image label, object metadata, a noisy web-style alt-text and a
dense synthetic caption with attributes, counts, positions and pairwise relations.
"""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np

from .shards import encode_png, write_shards

CLASSES = ("background", "circle", "square", "triangle")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 205, 35),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
}
SIZES = {"small": 0.09, "large": 0.16}  # radius as a fraction of the image size at 5 m
BACKGROUND_DEPTH = 10.0  # metres
DEPTH_RANGE = (2.0, 8.0)
SPLIT_STRIDE = 10_000_000
SPLIT_OFFSETS = {"train": 0, "probe_train": SPLIT_STRIDE, "probe_test": 2 * SPLIT_STRIDE}
RELATION_WORDS = ("left of", "right of", "above", "below", "in front of", "behind", "next to")

_MIN_VISIBLE = 0.4  # every object keeps at least this fraction of its own pixels
_EXTENT = {"circle": 1.0, "square": 0.8 * 2**0.5, "triangle": 1.3}  # max reach / radius
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_GENERIC = ("my new wallpaper", "abstract art", "untitled", "desktop background", "geometry",
            "minimalist poster", "so colorful!!", "kids learning toys", "screenshot", "pattern",
            "design inspiration", "cool picture", "photo", "download free")
_WEB_TEMPLATES = ("{a}", "{a}", "a photo with {a}", "{a} on a plain background", "{a} clipart",
                  "stock image: {a}", "{a} illustration")
_WEB_TEMPLATES_2 = ("{a} and {b}", "{a} with {b}", "{a} next to {b}", "picture of {a} and {b}")
_VOCAB = set(CLASSES[1:]) | set(COLOURS)
_TAG_ALIASES = {**{v: k for k, v in _PLURAL.items()}, **{w: w for w in _VOCAB}}


def _rngs(seed: int) -> tuple[np.random.Generator, ...]:
    """Independent streams for layout, pixel noise and captions (so captions never move pixels)."""
    ss = np.random.SeedSequence([int(seed), 0x5CE7E])
    return tuple(np.random.default_rng(s) for s in ss.spawn(3))


def _shape_mask(shape: str, xs, ys, cx, cy, r, angle) -> np.ndarray:
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    c, s = np.cos(angle), np.sin(angle)
    if shape == "square":
        h = 0.8 * r
        return (np.abs(dx * c + dy * s) <= h) & (np.abs(-dx * s + dy * c) <= h)
    # equilateral triangle, circumradius 1.3 r, pointing up (image y grows downwards) then tilted
    big_r = 1.3 * r
    mask = np.ones(np.broadcast(dx, dy).shape, bool)
    for k in range(3):
        a = -np.pi / 2 + angle + 2 * np.pi * k / 3
        mask &= -(dx * np.cos(a) + dy * np.sin(a)) <= big_r / 2
    return mask


def _sample_objects(rng: np.random.Generator, size: int, n: int) -> list[dict]:
    objs, used = [], set()
    for _ in range(n):
        while True:
            shape = CLASSES[int(rng.integers(1, len(CLASSES)))]
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            size_word = "large" if rng.random() < 0.5 else "small"
            if (shape, colour, size_word) not in used:  # keeps every reference unambiguous
                used.add((shape, colour, size_word))
                break
        depth = round(float(rng.uniform(*DEPTH_RANGE)), 3)
        r = SIZES[size_word] * size * (5.0 / depth) ** 0.3  # nearer objects look a bit larger
        margin = r * _EXTENT[shape] + 0.5
        objs.append({
            "shape": shape, "class_id": CLASSES.index(shape), "colour": colour,
            "size": size_word, "x": float(rng.uniform(margin, size - margin)),
            "y": float(rng.uniform(margin, size - margin)), "depth": depth,
            "radius": float(r), "angle": float(rng.uniform(-0.5, 0.5)),
        })
    return objs


def _compose(objs: list[dict], size: int, xs, ys) -> np.ndarray:
    """Instance map (-1 = background) painted far-to-near; fills area / visible_pixels."""
    inst = np.full((size, size), -1, np.int16)
    for i in sorted(range(len(objs)), key=lambda i: -objs[i]["depth"]):
        o = objs[i]
        mask = _shape_mask(o["shape"], xs, ys, o["x"], o["y"], o["radius"], o["angle"])
        o["area"] = int(mask.sum())
        inst[mask] = i
    counts = np.bincount(inst.ravel() + 1, minlength=len(objs) + 1)[1:]
    for o, c in zip(objs, counts):
        o["visible_pixels"] = int(c)
    return inst


def _position(o: dict, size: int) -> str:
    h = ("left", "centre", "right")[min(int(3 * o["x"] / size), 2)]
    v = ("top", "middle", "bottom")[min(int(3 * o["y"] / size), 2)]
    if h == "centre" and v == "middle":
        return "in the centre"
    if v == "middle":
        return f"on the {h}"
    if h == "centre":
        return f"at the {v}"
    return f"at the {v} {h}"


def relation_words(a: dict, b: dict, size: int) -> list[str]:
    """How object ``a`` relates to object ``b``: e.g. ["left of", "above", "in front of"]."""
    rels, tol = [], 0.08 * size
    if abs(a["x"] - b["x"]) >= tol:
        rels.append("left of" if a["x"] < b["x"] else "right of")
    if abs(a["y"] - b["y"]) >= tol:
        rels.append("above" if a["y"] < b["y"] else "below")
    if abs(a["depth"] - b["depth"]) >= 0.5:
        rels.append("in front of" if a["depth"] < b["depth"] else "behind")
    return rels or ["next to"]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _synthetic_caption(rng, objs: list[dict], size: int, background: str) -> str:
    n = len(objs)
    order = sorted(objs, key=lambda o: o["depth"]) if rng.random() < 0.5 else \
        sorted(objs, key=lambda o: o["x"])
    counts = {s: sum(o["shape"] == s for o in objs) for s in CLASSES[1:]}
    count_txt = _join([f"{_NUMBERS[c]} {s if c == 1 else _PLURAL[s]}"
                       for s, c in counts.items() if c])
    intro = f"{_NUMBERS[n]} {'shape' if n == 1 else 'shapes'} on a {background} background"
    intro = f"{intro}: {count_txt}." if n > 1 else f"{intro}."
    descs = []
    for o in order:
        d = f"{_article(o['size'] + ' ' + o['colour'] + ' ' + o['shape'])} {_position(o, size)}"
        if o["visible_pixels"] < 0.9 * o["area"]:
            d += ", partly hidden"
        descs.append(d)
    sentences = [intro, ("there is " if rng.random() < 0.5 else "") + "; ".join(descs) + "."]
    def ref(o: dict) -> str:  # colour+shape, plus the size word when that alone is ambiguous
        dup = sum(x["colour"] == o["colour"] and x["shape"] == o["shape"] for x in objs) > 1
        return f"the {o['size'] + ' ' if dup else ''}{o['colour']} {o['shape']}"

    # every pair for up to three objects; beyond that a chain of neighbours keeps captions short
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)] if n <= 3 else \
        [(i, i + 1) for i in range(n - 1)]
    for i, j in pairs:
        a, b = (order[i], order[j]) if rng.random() < 0.5 else (order[j], order[i])
        sentences.append(f"{ref(a)} is {_join(relation_words(a, b, size))} {ref(b)}.")
    return " ".join(sentences)


def _web_caption(rng, objs: list[dict], web_noise: float) -> str:
    if rng.random() < web_noise:
        if rng.random() < 0.4:
            fmt = ("img_{:04d}", "DSC_{:04d}.jpg", "IMG{:05d}.png", "photo {:d}")[int(rng.integers(4))]
            return fmt.format(int(rng.integers(10_000)))
        return _GENERIC[int(rng.integers(len(_GENERIC)))]
    ranked = sorted(objs, key=lambda o: -o["visible_pixels"])
    k = 2 if len(ranked) > 1 and rng.random() < 0.4 else 1
    picked = [ranked[0]] + ([ranked[int(rng.integers(1, len(ranked)))]] if k == 2 else [])
    phrases = []
    for o in picked:
        u = rng.random()
        if u < 0.55:
            p = f"{o['colour']} {o['shape']}"
        elif u < 0.75:
            p = o["shape"]
        elif u < 0.9:
            p = f"{o['colour']} shape"
        else:
            p = f"{'big' if o['size'] == 'large' else 'little'} {o['colour']} {o['shape']}"
        phrases.append(_article(p) if rng.random() < 0.5 else p)
    tmpl = _WEB_TEMPLATES_2 if k == 2 else _WEB_TEMPLATES
    text = tmpl[int(rng.integers(len(tmpl)))].format(a=phrases[0], b=phrases[-1])
    return text.title() if rng.random() < 0.15 else text


def render_scene(seed: int, size: int = 112, max_objects: int = 3, web_noise: float = 0.3) -> dict:
    """Render one scene; see the module docstring. Depth is float32 metres, label a class id."""
    if not 1 <= max_objects <= 9:
        raise ValueError(f"max_objects must be in 1..9, got {max_objects}")
    layout_rng, pix_rng, cap_rng = _rngs(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    n = int(layout_rng.integers(1, max_objects + 1))
    for _ in range(20):  # resample layouts until every object is sufficiently visible
        objs = _sample_objects(layout_rng, size, n)
        inst = _compose(objs, size, xs, ys)
        if all(o["visible_pixels"] >= _MIN_VISIBLE * o["area"] for o in objs):
            break
    else:  # drop the hidden ones; the nearest object is always whole, so at least one remains
        objs = [o for o in objs if o["visible_pixels"] >= _MIN_VISIBLE * o["area"]]
        inst = _compose(objs, size, xs, ys)

    # background: smooth gradient between two muted colours along a random direction
    grey = pix_rng.uniform(70, 200, size=2)
    ends = grey[:, None] + pix_rng.uniform(-20, 20, size=(2, 3))
    phi = pix_rng.uniform(0, 2 * np.pi)
    t = (xs * np.cos(phi) + ys * np.sin(phi)) / size
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = ends[0] * (1 - t[..., None]) + ends[1] * t[..., None]
    background = "light" if grey.mean() > 150 else "dark" if grey.mean() < 110 else "grey"

    seg = np.zeros((size, size), np.uint8)
    depth = np.full((size, size), BACKGROUND_DEPTH, np.float32)
    for i, o in enumerate(objs):
        m = inst == i
        if not m.any():
            continue
        # flat colour, slightly jittered, with a soft light from the top left
        base = np.clip(np.array(COLOURS[o["colour"]]) + pix_rng.uniform(-12, 12, 3), 0, 255)
        shade = 1.0 - 0.12 * ((xs[m] - o["x"]) + (ys[m] - o["y"])) / (1.5 * o["radius"])
        image[m] = base * shade[:, None]
        seg[m] = o["class_id"]
        depth[m] = o["depth"]
    image += pix_rng.normal(0.0, 3.0, size=image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    label = max(objs, key=lambda o: o["visible_pixels"])["class_id"]
    return {
        "image": image, "segmentation": seg, "depth": depth, "label": int(label),
        "objects": objs,
        "web_caption": _web_caption(cap_rng, objs, web_noise),
        "synthetic_caption": _synthetic_caption(cap_rng, objs, size, background),
    }


def caption_tags(*captions: str | None) -> list[str]:
    """Sorted shape and colour words appearing in any caption (plurals folded)."""
    words = set()
    for c in captions:
        for w in re.findall(r"[a-z]+", (c or "").lower()):
            if w in _TAG_ALIASES:
                words.add(_TAG_ALIASES[w])
    return sorted(words)


def scene_row(seed: int, split: str, size: int = 112, **kw) -> dict:
    """One row in the shard schema (with label, segmentation and depth eval columns)."""
    s = render_scene(seed, size=size, **kw)
    depth_mm = np.clip(np.rint(s["depth"] * 1000.0), 0, 65535).astype(np.uint16)
    return {
        "key": f"{split}-{seed:08d}",
        "image": encode_png(s["image"]),
        "web_caption": s["web_caption"],
        "synthetic_caption": s["synthetic_caption"],
        "tags": caption_tags(s["web_caption"], s["synthetic_caption"]),
        "width": size,
        "height": size,
        "label": s["label"],
        "segmentation": encode_png(s["segmentation"]),
        "depth": encode_png(depth_mm),
    }


def split_seeds(n: int, *, split: str = "train", seed: int = 0) -> range:
    """The scene seeds of a split; different splits never overlap."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_OFFSETS)}")
    if n < 0 or seed < 0 or seed + n > SPLIT_STRIDE:
        raise ValueError(f"need 0 <= seed and seed + n <= {SPLIT_STRIDE}, got seed={seed}, n={n}")
    start = SPLIT_OFFSETS[split] + seed
    return range(start, start + n)


def generate_scenes(out_dir: str, n: int, *, split: str = "train", seed: int = 0, size: int = 112,
                    rows_per_shard: int = 256, web_noise: float = 0.3) -> dict:
    """Render ``n`` scenes of ``split`` into Parquet shards in ``out_dir``; return the manifest."""
    seeds = split_seeds(n, split=split, seed=seed)

    def rows() -> Iterator[dict]:
        for s in seeds:
            yield scene_row(s, split, size=size, web_noise=web_noise)

    return write_shards(rows(), out_dir, source=f"scenes:{split}:seed={seed}:size={size}",
                        rows_per_shard=rows_per_shard)
