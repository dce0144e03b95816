"""The two captions of a scene, as TIPS pairs them: a noisy web alt-text and a dense description.

The web caption imitates alt-text: short, partial (one or two of the most visible objects, some
attributes dropped), and with probability `web_noise` off-topic (a file name or a generic phrase
that names nothing in the image). The synthetic caption plays the part of TIPS's PaliGemma
captions: every visible object with its size, colour, material, pattern and place, the counts per
class, the ground and background, and spatial relations between objects (left of / right of,
above / below for an object resting on another, in front of / behind).

Objects are dicts with the words `shape`, `colour`, `size`, `material`, `pattern`, and `u` (image
column of the centre, pixels), `depth` (metres to the camera plane of its footprint's centre), `id`
(its instance id), `on` (the id of the object it rests on, 0 for the ground), `area` and
`visible_pixels`.
"""

from __future__ import annotations

NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATION_WORDS = ("left of", "right of", "above", "below", "in front of", "behind", "next to")
PARTLY_HIDDEN = 0.85  # an object showing less of itself than this is "partly hidden"
DEPTH_GAP = 0.6  # metres: closer than this in depth, neither is "in front of" the other
SIDE_GAP = 0.06  # fraction of the image width, likewise for "left of"
# Off-topic alt-texts: none may contain a word of the scene vocabulary (tests check it).
GENERIC = (
    "my new wallpaper",
    "untitled",
    "desktop background",
    "geometry homework",
    "minimalist poster",
    "so cool!!",
    "kids learning toys",
    "screenshot",
    "3d render",
    "design inspiration",
    "nice picture",
    "photo",
    "download free",
    "blender test scene",
    "found this on my drive",
    "wow",
    "art project",
    "the weekend",
)
_WEB_ONE = (
    "{a}",
    "{a}",
    "a photo of {a}",
    "{a} on the floor",
    "{a} 3d render",
    "stock image: {a}",
    "{a} illustration",
    "look at this {a}",
)
_WEB_TWO = ("{a} and {b}", "{a} with {b}", "{a} next to {b}", "picture of {a} and {b}")
_PLURAL = {"sphere": "spheres", "cube": "cubes", "cylinder": "cylinders", "cone": "cones", "pyramid": "pyramids"}


def plural(shape: str) -> str:
    return _PLURAL.get(shape, shape + "s")


def relation_words(a: dict, b: dict, size: int) -> list[str]:
    """How object `a` relates to object `b` as the camera sees them, e.g. ["left of", "behind"]."""
    rels = []
    if abs(a["u"] - b["u"]) >= SIDE_GAP * size:
        rels.append("left of" if a["u"] < b["u"] else "right of")
    if a["on"] == b["id"]:
        rels.append("above")
    elif b["on"] == a["id"]:
        rels.append("below")
    if abs(a["depth"] - b["depth"]) >= DEPTH_GAP:
        rels.append("in front of" if a["depth"] < b["depth"] else "behind")
    return rels or ["next to"]


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def describe(o: dict) -> str:
    """'large red metal cube', with 'striped' or 'checkered' before the colour when patterned."""
    pattern = "" if o["pattern"] == "plain" else o["pattern"] + " "
    return f"{o['size']} {pattern}{o['colour']} {o['material']} {o['shape']}"


def reference(o: dict) -> str:
    return f"the {o['colour']} {o['shape']}"  # (shape, colour) is unique within a scene


def place(o: dict, size: int, depth_range: tuple[float, float]) -> str:
    h = ("left", "", "right")[min(int(3 * o["u"] / size), 2)]
    lo, hi = depth_range
    v = ("front", "", "back")[min(max(int(3 * (o["depth"] - lo) / (hi - lo)), 0), 2)]
    if not h and not v:
        return "in the middle"
    if not v:
        return f"on the {h}"
    return f"at the {v} {h}".rstrip()


def synthetic_caption(rng, objs: list[dict], setting: str, size: int, depth_range: tuple[float, float]) -> str:
    n = len(objs)
    counts: dict[str, int] = {}
    for o in sorted(objs, key=lambda o: o["shape"]):
        counts[o["shape"]] = counts.get(o["shape"], 0) + 1
    count_txt = join([f"{NUMBERS[c]} {s if c == 1 else plural(s)}" for s, c in counts.items()])
    noun = "object" if n == 1 else "objects"
    sentences = [f"{NUMBERS[n]} {noun} {setting}" + (f": {count_txt}." if n > 1 else ".")]
    order = sorted(objs, key=(lambda o: o["depth"]) if rng.random() < 0.5 else (lambda o: o["u"]))
    descs = []
    for o in order:
        d = f"{article(describe(o))} {place(o, size, depth_range)}"
        if o["visible_pixels"] < PARTLY_HIDDEN * o["area"]:
            d += ", partly hidden"
        descs.append(d)
    sentences.append(("there is " if rng.random() < 0.5 else "") + "; ".join(descs) + ".")
    # every pair up to four objects; beyond that, neighbours in the reading order
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)] if n <= 4 else [(i, i + 1) for i in range(n - 1)]
    for i, j in pairs:
        a, b = (order[i], order[j]) if rng.random() < 0.5 else (order[j], order[i])
        if b["on"] == a["id"]:
            a, b = b, a  # say what rests on what
        sentences.append(f"{reference(a)} is {join(relation_words(a, b, size))} {reference(b)}.")
    return " ".join(sentences)


def web_caption(rng, objs: list[dict], web_noise: float) -> str:
    if rng.random() < web_noise:
        if rng.random() < 0.4:
            fmt = ("img_{:04d}", "DSC_{:04d}.jpg", "IMG{:05d}.png", "photo {:d}")[int(rng.integers(4))]
            return fmt.format(int(rng.integers(10_000)))
        return GENERIC[int(rng.integers(len(GENERIC)))]
    ranked = sorted(objs, key=lambda o: -o["visible_pixels"])
    picked = ranked[:1]
    if len(ranked) > 1 and rng.random() < 0.4:
        picked.append(ranked[int(rng.integers(1, len(ranked)))])
    phrases = []
    for o in picked:
        u = rng.random()
        if u < 0.45:
            p = f"{o['colour']} {o['shape']}"
        elif u < 0.65:
            p = o["shape"]
        elif u < 0.8:
            p = f"{o['colour']} {o['material']} {o['shape']}"
        elif u < 0.9:
            p = f"{'shiny' if o['material'] == 'metal' else o['colour']} thing"
        else:
            p = f"{'big' if o['size'] == 'large' else 'little'} {o['colour']} {o['shape']}"
        phrases.append(article(p) if rng.random() < 0.5 else p)
    templates = _WEB_TWO if len(picked) == 2 else _WEB_ONE
    text = templates[int(rng.integers(len(templates)))].format(a=phrases[0], b=phrases[-1])
    return text.title() if rng.random() < 0.15 else text
