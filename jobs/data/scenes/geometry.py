"""Ray casting for the procedural scenes: exact hits, distances and normals, vectorised over pixels.

World frame: metres, y up, the ground is the plane y = 0. A shape stands on its base point
(x, base_y, z), is turned by `angle` about the vertical axis, and has a half-width `extent`.
Every intersection takes ray origins `origin` ((3,) or (N, 3)) and unit directions `dirs` (N, 3)
and returns the distance along each ray to its first hit (inf where it misses) and the outward
unit normal there in world coordinates. Exact normals are what make the Lambertian shading and the
normals ground truth agree.
"""

from __future__ import annotations

import numpy as np

SHAPES = ("sphere", "cube", "cylinder", "cone", "pyramid")
HEIGHT = {"sphere": 2.0, "cube": 2.0, "cylinder": 2.0, "cone": 2.2, "pyramid": 1.9}  # x extent
FLAT_TOP = ("cube", "cylinder")  # shapes something can stand on
EPS = 1e-5


def footprint_radius(shape: str, extent: float) -> float:
    """Radius of the vertical cylinder that holds the shape at any rotation."""
    return extent * (2**0.5 if shape in ("cube", "pyramid") else 1.0)


def _roots(a, b, c):
    """Both roots of a t^2 + b t + c = 0 (nan where none), stable for b^2 >> ac."""
    with np.errstate(invalid="ignore", divide="ignore"):
        disc = b * b - 4 * a * c
        sq = np.sqrt(np.where(disc >= 0, disc, np.nan))
        q = -0.5 * (b + np.copysign(sq, b))
        return q / a, c / q


def _first(ts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Smallest valid candidate distance per ray and which candidate it was."""
    t = np.stack([np.where(np.isfinite(x) & (x > EPS), x, np.inf) for x in ts], axis=1)
    which = t.argmin(1)
    return t[np.arange(len(t)), which], which


def _sphere(o, d, r):
    oc = o - np.array([0.0, r, 0.0])
    b = 2 * (oc * d).sum(-1)
    t, _ = _first(list(_roots(np.ones_like(b), b, (oc * oc).sum(-1) - r * r)))
    n = (o + np.where(np.isfinite(t), t, 0)[:, None] * d - np.array([0.0, r, 0.0])) / r
    return t, n


def _polytope(o, d, normals, offsets):
    """Convex body {p : normals @ p <= offsets}: the ray enters at the last entering plane."""
    denom = d @ normals.T
    num = offsets - (o @ normals.T)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / denom
    t_in = np.where(denom < 0, t, -np.inf)
    t_out = np.where(denom > 0, t, np.inf).min(1)
    missed = ((denom == 0) & (num < 0)).any(1)
    face = t_in.argmax(1)
    t_in = t_in[np.arange(len(face)), face]
    hit = (t_in <= t_out) & (t_in > EPS) & ~missed
    return np.where(hit, t_in, np.inf), normals[face]


def _box_planes(e: float):
    n = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    return n, np.array([e, e, 2 * e, 0, e, e])


def _pyramid_planes(e: float, h: float):
    side = np.array([[h, e, 0], [-h, e, 0], [0, e, h], [0, e, -h]], float)
    off = h * e / np.linalg.norm(side, axis=1)
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    return np.vstack([side, [[0, -1, 0]]]), np.append(off, 0.0)


def _round_solid(o, d, r, h, k):
    """Cylinder (k = 0) or cone (k = r / h, apex at height h) standing on the disc y = 0.

    The side is x^2 + z^2 = (r - k y)^2 for 0 <= y <= h; the caps are discs of radius r.
    """
    ox, oy, oz = (o[..., i] for i in range(3))
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    r0 = r - k * oy
    a = dx * dx + dz * dz - k * k * dy * dy
    b = 2 * (ox * dx + oz * dz + k * r0 * dy)
    c = ox * ox + oz * oz - r0 * r0
    with np.errstate(divide="ignore", invalid="ignore"):
        sides = []
        for t in _roots(a, b, c):
            y = oy + t * dy
            sides.append(np.where((y >= 0) & (y <= h), t, np.nan))
        caps = []
        for level in (0.0, h) if k == 0 else (0.0,):
            t = (level - oy) / dy
            px, pz = ox + t * dx, oz + t * dz
            caps.append(np.where(px * px + pz * pz <= r * r, t, np.nan))
    t, which = _first(sides + caps)
    p = o + np.where(np.isfinite(t), t, 0)[:, None] * d
    n = np.stack([p[:, 0], k * np.hypot(p[:, 0], p[:, 2]), p[:, 2]], axis=1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    n[which == 2] = (0.0, -1.0, 0.0)
    n[which == 3] = (0.0, 1.0, 0.0)
    return t, n


def _turn(v, angle: float):
    """Rotate vectors about the vertical axis."""
    c, s = np.cos(angle), np.sin(angle)
    x, z = v[..., 0], v[..., 2]
    return np.stack([c * x + s * z, v[..., 1], -s * x + c * z], axis=-1)


def intersect(obj: dict, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance along each ray to `obj` (inf on a miss) and the world normal at the hit."""
    shape, e = obj["shape"], obj["extent"]
    o = _turn(np.asarray(origin, float) - (obj["x"], obj["base_y"], obj["z"]), -obj["angle"])
    d = _turn(dirs, -obj["angle"])
    h = HEIGHT[shape] * e
    if shape == "sphere":
        t, n = _sphere(o, d, e)
    elif shape == "cube":
        t, n = _polytope(o, d, *_box_planes(e))
    elif shape == "pyramid":
        t, n = _polytope(o, d, *_pyramid_planes(e, h))
    elif shape == "cylinder":
        t, n = _round_solid(o, d, e, h, 0.0)
    elif shape == "cone":
        t, n = _round_solid(o, d, e, h, e / h)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    return t, _turn(n, obj["angle"])


def bounding_sphere(obj: dict) -> tuple[np.ndarray, float]:
    h = HEIGHT[obj["shape"]] * obj["extent"]
    centre = np.array([obj["x"], obj["base_y"] + h / 2, obj["z"]])
    return centre, float(np.hypot(footprint_radius(obj["shape"], obj["extent"]), h / 2))


class Camera:
    """A pinhole camera at `height` above the origin looking along +z, pitched down by `pitch`.

    Camera frame (for normals): x right, y up, z towards the viewer (OpenGL convention), so a
    visible surface has n_z > 0 and the ground's normal is (0, cos pitch, sin pitch).
    """

    def __init__(self, size: int, height: float, pitch: float, half_fov: float):
        self.size, self.height, self.pitch = size, float(height), float(pitch)
        self.focal = size / 2 / np.tan(half_fov)
        self.position = np.array([0.0, height, 0.0])
        self.forward = np.array([0.0, -np.sin(pitch), np.cos(pitch)])
        self.up = np.array([0.0, np.cos(pitch), np.sin(pitch)])
        self.right = np.array([1.0, 0.0, 0.0])

    def rays(self) -> np.ndarray:
        """Unit directions through every pixel centre, row-major, (size * size, 3)."""
        c = (np.arange(self.size) + 0.5 - self.size / 2) / self.focal
        xs, ys = np.meshgrid(c, -c)
        d = self.forward + xs.reshape(-1, 1) * self.right + ys.reshape(-1, 1) * self.up
        return d / np.linalg.norm(d, axis=1, keepdims=True)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(u, v, z-depth) of world points: u is the column, v the row, in pixels."""
        p = np.atleast_2d(points) - self.position
        z = p @ self.forward
        return np.stack(
            [self.size / 2 + self.focal * (p @ self.right) / z, self.size / 2 - self.focal * (p @ self.up) / z, z],
            axis=1,
        )

    def to_camera(self, normals: np.ndarray) -> np.ndarray:
        return np.stack([normals @ self.right, normals @ self.up, -(normals @ self.forward)], axis=-1)

    def box(self, points: np.ndarray) -> tuple[slice, slice] | None:
        """Rows and columns of the image of the convex hull of `points` (None: off the image)."""
        uvz = self.project(points)
        if (uvz[:, 2] <= 1e-3).any():  # reaches behind the camera: no tight bound
            return slice(0, self.size), slice(0, self.size)
        lo = np.clip(np.floor(uvz[:, :2].min(0)) - 1, 0, self.size).astype(int)
        hi = np.clip(np.ceil(uvz[:, :2].max(0)) + 1, 0, self.size).astype(int)
        if (hi <= lo).any():
            return None
        return slice(lo[1], hi[1]), slice(lo[0], hi[0])

    def pixel_box(self, obj: dict) -> tuple[slice, slice] | None:
        """Rows and columns that can see `obj`: the image of its bounding box's corners."""
        r = footprint_radius(obj["shape"], obj["extent"])
        h = HEIGHT[obj["shape"]] * obj["extent"]
        return self.box(
            np.array(
                [
                    [obj["x"] + sx * r, obj["base_y"] + sy * h, obj["z"] + sz * r]
                    for sx in (-1, 1)
                    for sy in (0, 1)
                    for sz in (-1, 1)
                ]
            )
        )

    def shadow_box(self, obj: dict, light: np.ndarray) -> tuple[slice, slice] | None:
        """Pixels whose surface can lie in `obj`'s shadow: every surface is at y >= 0, so the
        shadow stays inside the bounding sphere swept away from the light down to the ground."""
        centre, radius = bounding_sphere(obj)
        far = centre - (centre[1] + radius) / light[1] * light
        cube = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * radius
        return self.box(np.vstack([centre + cube, far + cube]))
