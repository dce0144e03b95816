"""Procedural scenes with exact dense ground truth: Kubric's idea without a renderer.

A scene is a few solid objects (sphere, cube, cylinder, cone, pyramid; CLEVR's attributes: size,
colour, material, plus a surface pattern) standing on a textured ground plane, some resting on
others, in front of a wall or under a sky, seen by a perspective pinhole camera and lit by one
directional light with hard shadows. Every pixel is ray cast (geometry.py), so occlusion is a
per-pixel z-buffer and depth and normals are exact; shading is Lambertian from the exact normals,
with a specular lobe for rubber and metal and an environment reflection for metal.

Per scene: RGB image; semantic segmentation (class ids, 0 for ground, wall and sky); instance
segmentation (0 background, k for the k-th listed object); depth as float32 metres along the
optical axis (z-depth, as NYUv2 stores it; 0 where a ray meets no surface, i.e. sky); normals as
float32 unit vectors in the camera frame (x right, y up, z towards the viewer; zero for sky); the
`label` (class of the object with most visible pixels, for zero-shot and KNN probes); object
metadata; and the two captions of captions.py (generate.py writes them into shards). Everything
is a pure function of the seed: layout, pixel noise and captions draw from separate random streams,
so caption settings never move a pixel.
"""

from __future__ import annotations

import numpy as np

from tipslab.jobs.data.scenes import captions
from tipslab.jobs.data.scenes.geometry import (
    HEIGHT,
    Camera,
    bounding_sphere,
    intersect,
)
from tipslab.jobs.data.scenes.layout import (
    CLASSES,
    COLOURS,
    DEPTH_RANGE,
    GROUNDS,
    HALF_FOV,
    MATERIALS,
    MAX_GROUND,
    MIN_VISIBLE,
    SKIES,
    WALLS,
    _rngs,
    sample_layout,
)


def _linear(rgb) -> np.ndarray:
    return (np.asarray(rgb, float) / 255.0) ** 2.2


def _texture(kind: str, a, b, scale: float, noise_seed: int) -> np.ndarray:
    """A 0..1 pattern over surface coordinates (a, b) in metres."""
    if kind == "checkered":
        return ((np.floor(a / scale) + np.floor(b / scale)) % 2).astype(float)
    if kind == "striped":
        return (np.floor((a + b) / scale) % 2).astype(float)
    if kind == "speckled":  # value noise: a random grid, bilinearly interpolated
        grid = np.random.default_rng(noise_seed).random((33, 33))
        fa, fb = (a / scale * 2) % 32, (b / scale * 2) % 32
        ia, ib = fa.astype(int), fb.astype(int)
        wa, wb = fa - ia, fb - ib
        top = grid[ia, ib] * (1 - wb) + grid[ia, ib + 1] * wb
        bottom = grid[ia + 1, ib] * (1 - wb) + grid[ia + 1, ib + 1] * wb
        return top * (1 - wa) + bottom * wa
    return np.zeros_like(a)


def _composite(t_bg, hits, active):
    """Per-pixel nearest surface among the background and the `active` objects."""
    t_best, inst = t_bg.copy(), np.full(len(t_bg), -1)
    for i in active:
        idx, t, _ = hits[i]
        closer = t < t_best[idx]
        t_best[idx[closer]] = t[closer]
        inst[idx[closer]] = i
    return t_best, inst


def _cast(layout: dict, cam: Camera, rays: np.ndarray):
    """Hits of the background and of every object; drops objects that end up barely visible."""
    size, origin = cam.size, cam.position
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(rays[:, 1] < 0, -origin[1] / rays[:, 1], np.inf)
        t_ground[origin[2] + t_ground * rays[:, 2] > MAX_GROUND] = np.inf
        t_wall = np.full(len(rays), np.inf)
        if layout["wall"]:
            t_wall = np.where(rays[:, 2] > 0, (layout["wall_z"] - origin[2]) / rays[:, 2], np.inf)
    t_bg = np.minimum(t_ground, t_wall)
    kind = np.where(np.isinf(t_bg), 0, np.where(t_ground <= t_wall, 1, 2))  # sky, ground, wall
    objs = layout["objects"]
    hits = []
    for o in objs:
        box = cam.pixel_box(o)
        if box is None:
            hits.append((np.zeros(0, int), np.zeros(0), np.zeros((0, 3))))
            continue
        rows, cols = np.arange(size)[box[0]], np.arange(size)[box[1]]
        idx = (rows[:, None] * size + cols[None, :]).ravel()
        t, n = intersect(o, origin, rays[idx])
        keep = t < t_bg[idx]
        hits.append((idx[keep], t[keep], n[keep]))
    min_pixels = max(1, round(16 * (size / 112) ** 2))
    active = list(range(len(objs)))
    while True:
        t_best, inst = _composite(t_bg, hits, active)
        visible = np.bincount(inst + 1, minlength=len(objs) + 1)[1:]
        drop = {i for i in active if visible[i] < max(MIN_VISIBLE * len(hits[i][0]), min_pixels)}
        drop |= {i for i in active if objs[i]["on"] is not None and objs[i]["on"] in drop}
        if not drop:
            kind = np.where(inst >= 0, 3, kind)  # 3: an object
            return t_best, inst, kind, hits, active, visible
        active = [i for i in active if i not in drop]


def _shadowed(layout, cam, points, normals, inst, active) -> np.ndarray:
    """Which pixels' surfaces see an object between them and the (directional) light.

    Per object, only pixels inside its shadow's screen box whose light ray passes its bounding
    sphere are ray cast exactly.
    """
    light, size = np.asarray(layout["light"]), cam.size
    out = np.zeros(len(points), bool)
    for i in active:
        o = layout["objects"][i]
        box = cam.shadow_box(o, light)
        if box is None:
            continue
        rows, cols = np.arange(size)[box[0]], np.arange(size)[box[1]]
        idx = (rows[:, None] * size + cols[None, :]).ravel()
        origins = points[idx] + 1e-3 * normals[idx]
        centre, radius = bounding_sphere(o)
        rel = centre - origins
        along = rel @ light
        near = (along > -radius) & ((rel * rel).sum(1) - along * along <= radius * radius)
        cand = idx[near & (inst[idx] != i) & ~out[idx]]
        if len(cand):
            orig = points[cand] + 1e-3 * normals[cand]
            t, _ = intersect(o, orig, np.broadcast_to(light, (len(cand), 3)))
            out[cand[np.isfinite(t)]] = True
    return out


_GAMMA = np.round((np.arange(4096) / 4095) ** (1 / 2.2) * 255).astype(np.float32)


def _shade(layout, cam, rays, t_best, inst, kind, hits, active, pix_rng) -> tuple:
    """Linear-light colours per pixel, then sRGB gamma (a lookup table) and sensor noise."""
    n_px, objs = len(rays), layout["objects"]
    points = cam.position + np.where(kind == 0, 0.0, t_best)[:, None] * rays
    normals = np.zeros((n_px, 3))
    ground, wall = np.flatnonzero(kind == 1), np.flatnonzero(kind == 2)
    normals[ground] = (0.0, 1.0, 0.0)
    normals[wall] = (0.0, 0.0, -1.0)
    for i in active:
        idx, _, n = hits[i]
        sel = inst[idx] == i
        normals[idx[sel]] = n[sel]
    light = np.asarray(layout["light"])
    lit = np.clip(normals @ light, 0, None) * ~_shadowed(layout, cam, points, normals, inst, active)
    amb = layout["ambient"]
    rgb = np.zeros((n_px, 3))
    low, high = (_linear(c) for c in GROUNDS[layout["ground"]])
    tex = _texture(
        layout["ground_texture"], points[ground, 0], points[ground, 2], layout["ground_scale"], layout["noise_seed"]
    )
    rgb[ground] = (low + (high - low) * tex[:, None]) * (amb + (1 - amb) * lit[ground, None])
    if layout["wall"]:
        bricks = _texture("checkered", points[wall, 0], points[wall, 1] * 2, 1.0, 0)
        rgb[wall] = _linear(WALLS[layout["wall"]]) * (0.9 + 0.1 * bricks[:, None]) * (amb + (1 - amb) * lit[wall, None])
    zenith, horizon = (_linear(c) for c in SKIES[layout["sky"]])
    sky = np.flatnonzero(kind == 0)
    rgb[sky] = horizon + (zenith - horizon) * np.clip(rays[sky, 1:2] * 2.5, 0, 1)
    for i in active:
        o, (idx, _, _) = objs[i], hits[i]
        px = idx[inst[idx] == i]
        colour = _linear(COLOURS[o["colour"]]) * (1 + pix_rng.uniform(-0.05, 0.05, 3))
        if o["pattern"] != "plain":
            local = (points[px] - (o["x"], o["base_y"], o["z"])) / o["extent"]
            bands = np.floor(local[:, 1] * 2.5) if o["pattern"] == "striped" else np.floor(local * 2).sum(1)
            colour = colour * np.where(bands % 2 == 1, 0.45, 1.0)[:, None]
        diffuse, strength, shininess, mirror = MATERIALS[o["material"]]
        n, lt = normals[px], lit[px]
        shade = colour * (diffuse * (amb + (1 - amb) * lt[:, None]))
        if strength:
            half = light - rays[px]
            half /= np.linalg.norm(half, axis=1, keepdims=True)
            shade += (strength * np.clip((n * half).sum(1), 0, None) ** shininess * (lt > 0))[:, None]
        if mirror:  # metal mirrors the sky above and the floor below
            up = (rays[px, 1] - 2 * (rays[px] * n).sum(1) * n[:, 1]) > 0
            shade += mirror * colour * np.where(up[:, None], (zenith + horizon) / 2, (low + high) / 2)
        rgb[px] = shade
    image = _GAMMA[(np.clip(rgb, 0, 1) * 4095).astype(np.int32)]
    image += 1.5 * pix_rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), normals


def render_layout(layout: dict, *, seed: int = 0, web_noise: float = 0.3) -> dict:
    """Draw a layout (see `sample_layout`); the module docstring lists what comes back."""
    size = layout["size"]
    _, pix_rng, cap_rng = _rngs(seed)
    cam = Camera(size, layout["camera"]["height"], layout["camera"]["pitch"], HALF_FOV)
    rays = cam.rays()
    t_best, inst, kind, hits, active, visible = _cast(layout, cam, rays)
    image, normals = _shade(layout, cam, rays, t_best, inst, kind, hits, active, pix_rng)
    ids = {i: k + 1 for k, i in enumerate(active)}  # instance ids in the kept objects' order
    objects = []
    for i in active:
        o = layout["objects"][i]
        h = HEIGHT[o["shape"]] * o["extent"]
        u, v, _ = cam.project([o["x"], o["base_y"] + h / 2, o["z"]])[0]
        objects.append(
            {
                **o,
                "class_id": CLASSES.index(o["shape"]),
                "id": ids[i],
                "on": ids[o["on"]] if o["on"] is not None else 0,
                "u": float(u),
                "v": float(v),
                "depth": float(cam.project([o["x"], 0.0, o["z"]])[0, 2]),
                "area": int(len(hits[i][0])),
                "visible_pixels": int(visible[i]),
            }
        )
    lut = np.zeros(len(layout["objects"]) + 1, np.uint8)
    for i in active:
        lut[i + 1] = ids[i]
    instances = lut[inst + 1]
    classes = np.array([0] + [CLASSES.index(o["shape"]) for o in layout["objects"]], np.uint8)
    depth = np.where(kind == 0, 0.0, t_best * (rays @ cam.forward)).astype(np.float32)
    cam_normals = np.where((kind == 0)[:, None], 0.0, cam.to_camera(normals)).astype(np.float32)
    behind = f"in front of a {layout['wall']} wall" if layout["wall"] else f"under {captions.article(layout['sky'])}"
    setting = f"on a {layout['ground_texture']} {layout['ground']} floor {behind}"
    label = max(objects, key=lambda o: o["visible_pixels"])["class_id"] if objects else 0
    return {
        "image": image.reshape(size, size, 3),
        "segmentation": classes[inst + 1].reshape(size, size),
        "instances": instances.reshape(size, size),
        "depth": depth.reshape(size, size),
        "normals": cam_normals.reshape(size, size, 3),
        "label": int(label),
        "objects": objects,
        "camera": cam,
        "setting": setting,
        # A layout whose objects were all clipped away gets no captions: render_scene draws it again.
        "web_caption": captions.web_caption(cap_rng, objects, web_noise) if objects else "",
        "synthetic_caption": (
            captions.synthetic_caption(cap_rng, objects, setting, size, DEPTH_RANGE) if objects else ""
        ),
    }


def render_scene(seed: int, size: int = 112, max_objects: int = 4, web_noise: float = 0.3) -> dict:
    """Render scene `seed`; see the module docstring for what comes back."""
    for attempt in range(100):  # a layout whose objects are all clipped away is drawn again
        scene = render_layout(sample_layout(seed, size, max_objects, attempt), seed=seed, web_noise=web_noise)
        if scene["objects"]:
            return scene
    raise RuntimeError(f"scene {seed}: no layout with a visible object at size {size}")
