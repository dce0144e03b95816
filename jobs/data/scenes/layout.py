"""The layout of a procedural scene, before any pixel is drawn: camera, light, background and
objects (CLEVR's shapes, sizes, colours and materials, plus a surface pattern), some resting on
others. The words here are the scenes' vocabulary: the captions, the tags and the segmentation
classes are made of them. Everything is a pure function of the seed (render.py draws the pixels)."""

from __future__ import annotations

import math

import numpy as np

from tipslab.jobs.data.scenes.geometry import FLAT_TOP, HEIGHT, SHAPES, footprint_radius
from tipslab.models.errors import ConfigError

CLASSES = ("background",) + SHAPES
COLOURS = {  # CLEVR's eight colours, sRGB
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SIZES = {"small": 0.4, "large": 0.75}  # half-width in metres, jittered by +-10%
MATERIALS = {  # diffuse weight, specular strength, shininess, mirror reflection
    "matte": (1.0, 0.0, 1.0, 0.0),
    "rubber": (0.9, 0.12, 6.0, 0.0),
    "metal": (0.3, 0.9, 80.0, 0.45),
}
PATTERNS = ("plain", "striped", "checkered")
PATTERN_ODDS = (0.7, 0.15, 0.15)
SKIES = {
    "clear sky": ((70, 120, 200), (185, 210, 235)),
    "overcast sky": ((150, 155, 160), (205, 205, 205)),
    "evening sky": ((80, 70, 130), (240, 160, 90)),
}  # zenith, horizon
WALLS = {
    "white": (225, 225, 220),
    "beige": (215, 195, 160),
    "brick": (150, 75, 55),
    "concrete": (140, 140, 135),
    "pastel": (175, 200, 215),
}
GROUNDS = {
    "stone": ((120, 118, 112), (160, 157, 150)),
    "sand": ((190, 170, 130), (215, 200, 165)),
    "grass": ((70, 110, 55), (100, 140, 70)),
    "slate": ((60, 65, 75), (95, 100, 110)),
    "wooden": ((140, 95, 60), (170, 125, 80)),
}
GROUND_TEXTURES = ("plain", "checkered", "striped", "speckled")
DEPTH_RANGE = (4.0, 10.0)  # metres from the camera plane to the footprints of objects on the ground
HALF_FOV = math.radians(22.0)
MAX_GROUND = 40.0  # metres along the ground; beyond it, sky (and depth stays inside 16-bit mm)
STACK_ODDS = 0.3  # chance that a new small object rests on a free large cube or cylinder
MIN_VISIBLE = 0.25  # an object must show this fraction of its unoccluded pixels, or it is dropped


def _rngs(seed: int, attempt: int = 0) -> tuple[np.random.Generator, ...]:
    """Independent streams for layout, pixel noise and captions."""
    ss = np.random.SeedSequence([int(seed), 0x5CE7E, attempt])
    return tuple(np.random.default_rng(s) for s in ss.spawn(3))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def make_object(
    shape: str,
    colour: str,
    size: str,
    material: str,
    x: float,
    z: float,
    *,
    pattern: str = "plain",
    angle: float = 0.0,
    extent: float | None = None,
    on: int | None = None,
    base_y: float = 0.0,
) -> dict:
    """An object of a layout: standing on the ground at (x, z), or on layout object `on`."""
    return {
        "shape": shape,
        "colour": colour,
        "size": size,
        "material": material,
        "pattern": pattern,
        "angle": float(angle),
        "x": float(x),
        "z": float(z),
        "extent": float(SIZES[size] if extent is None else extent),
        "base_y": float(base_y),
        "on": on,
    }


def sample_layout(seed: int, size: int = 112, max_objects: int = 4, attempt: int = 0) -> dict:
    """Camera, light, background and objects of a scene, before any pixel is drawn."""
    if not 1 <= max_objects <= 9:
        raise ConfigError(f"max_objects must be in 1..9, got {max_objects}")
    rng = _rngs(seed, attempt)[0]
    height, pitch = rng.uniform(2.5, 3.5), math.radians(rng.uniform(12.0, 28.0))
    az, el = rng.uniform(0, 2 * np.pi), math.radians(rng.uniform(30.0, 70.0))
    layout = {
        "size": size,
        "camera": {"height": height, "pitch": pitch},
        "light": [math.cos(el) * math.sin(az), math.sin(el), -math.cos(el) * math.cos(az)],
        "ambient": rng.uniform(0.2, 0.4),
        "sky": _pick(rng, list(SKIES)),
        "wall": _pick(rng, list(WALLS)) if rng.random() < 0.5 else None,
        "wall_z": rng.uniform(13.0, 18.0),
        "ground": _pick(rng, list(GROUNDS)),
        "ground_texture": _pick(rng, GROUND_TEXTURES),
        "ground_scale": rng.uniform(0.5, 1.5),
        "noise_seed": int(rng.integers(2**31)),
        "objects": [],
    }
    objs, used = layout["objects"], set()
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(30):
            shape, colour = _pick(rng, SHAPES), _pick(rng, list(COLOURS))
            word = "small" if rng.random() < 0.5 else "large"
            o = make_object(
                shape,
                colour,
                word,
                _pick(rng, list(MATERIALS)),
                0.0,
                0.0,
                pattern=PATTERNS[int(rng.choice(3, p=PATTERN_ODDS))],
                angle=rng.uniform(0, np.pi / 2),
                extent=SIZES[word] * rng.uniform(0.9, 1.1),
            )
            if (shape, colour) in used or not _place(rng, objs, o, height, pitch):
                continue
            used.add((shape, colour))
            objs.append(o)
            break
    return layout


def _place(rng, objs: list[dict], o: dict, height: float, pitch: float) -> bool:
    """Put `o` on a free large flat top (at STACK_ODDS) or on the ground in view; False when its
    footprint would touch another object's (the caller draws again)."""
    r = footprint_radius(o["shape"], o["extent"])
    free = [
        i
        for i, s in enumerate(objs)
        if s["shape"] in FLAT_TOP and s["on"] is None and all(p["on"] != i for p in objs) and r <= 0.8 * s["extent"]
    ]
    if free and rng.random() < STACK_ODDS:
        k = _pick(rng, free)
        s = objs[k]
        o.update(x=s["x"], z=s["z"], on=k, base_y=s["base_y"] + HEIGHT[s["shape"]] * s["extent"])
        return True
    depth = rng.uniform(*DEPTH_RANGE)
    half_width = 0.9 * depth * math.tan(HALF_FOV) - r
    o["x"] = rng.uniform(-half_width, half_width)
    o["z"] = (depth - height * math.sin(pitch)) / math.cos(pitch)
    return not any(
        p["on"] is None
        and math.hypot(p["x"] - o["x"], p["z"] - o["z"]) < r + footprint_radius(p["shape"], p["extent"]) + 0.1
        for p in objs
    )
