"""The TIPS training views of one image, made on CPU in the data pipeline (not in the model).

One global crop (it feeds the contrastive loss, the teacher, and, masked, the MIM student), N local
crops for self-distillation, a patch mask at the configured ratio (random or blockwise), and both
captions tokenised. `augment: dinov2` adds DINOv2's flips and photometric augmentations
(photometric.py); it is off by default because the scenes' synthetic captions say "left of" and
name colours, and a flipped or recoloured image would contradict its caption.

Every random choice of a row comes from a stream seeded by (seed, epoch, key), so a row's views
are the same whichever worker, batch or position it lands in, and change from epoch to epoch. The
epoch is the row's `epoch` column where the batch has one (the training pipeline's rows carry the
epoch they are read for: one dataset spans a stage's epochs), else the instance's `epoch`.

Speed (about 150 images/s per core is the goal at 224 px): images larger than the views need are
decoded at a reduced scale (JPEG DCT scaling, or a box reduction), and crops are cut and resized on
uint8 tensors. With photometric augmentations the batch becomes float once, the steps run on the
whole batch, and it is rounded back to uint8.

The views leave as uint8 in 0..255, a quarter of float32's bytes through Ray's object store and
onto the device, where the vision tower makes them float in [0, 1] (models/vision.py).

Bad rows (undecodable images, empty captions, wrong types: jobs/data/shards/rows.py) are skipped, logged
by key, and counted in output columns (`BAD_ROW_COLUMNS`) that the training loop sums over its
batches and across ranks. `TIPSViews.views` returns a batch's views and its counts apart, for a
caller that places the counts itself (the training pipeline: jobs/data/pipeline/streaming.py, which makes
sure that a batch without a good row loses none); calling the instance places them on the batch.
"""

import hashlib
import io
import logging
import math
import platform

import numpy as np
import torch
from PIL import Image
from torch.nn.functional import interpolate

from tipslab.jobs.config import AUGMENTS, experiment
from tipslab.jobs.data.pipeline import photometric
from tipslab.jobs.data.pipeline.masking import MASK_MODES, make_mask
from tipslab.jobs.data.shards.rows import (
    IMAGE_FORMATS,
    BadRow,
    BadRows,
    check_caption,
    check_key,
    check_pixels,
    check_tags,
    decode_image,
    image_size,
)
from tipslab.models.errors import ConfigError

log = logging.getLogger(__name__)

CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range
# The reasons of jobs/data/shards/rows.py, each counted in its own column; any other reason counts as "other".
BAD_REASONS = ("wrong_type", "not_an_image", "truncated", "too_many_pixels", "empty_caption", "missing_key", "other")
# Per-batch counters, carried on the last output row of each batch (0 on the others), so that a
# sum over any re-batching of the rows gives the totals: rows looked at, bad rows, bad rows by reason.
BAD_ROW_COLUMNS = ("rows_seen", "bad_rows") + tuple(f"bad_{r}" for r in BAD_REASONS)


def bad_row_counts(bad: BadRows) -> np.ndarray:
    """The values of BAD_ROW_COLUMNS for a BadRows, in that order (int64)."""
    counts = dict.fromkeys(BAD_REASONS, 0)
    for reason, k in bad.counts.items():
        counts[reason if reason in counts else "other"] += k
    return np.array([bad.rows_seen, bad.bad, *(counts[r] for r in BAD_REASONS)], dtype=np.int64)


def count_columns(names, values: np.ndarray, n: int) -> dict:
    """Columns `names` for a batch of `n` rows (n >= 1): `values` on the last row, 0 on the others."""
    columns = {}
    for name, value in zip(names, values):
        columns[name] = np.zeros(n, dtype=np.int64)
        columns[name][-1] = value
    return columns


def row_seed(seed: int, epoch: int, key: str) -> np.random.SeedSequence:
    """The seed of one row's random choices: stable across processes (not Python's salted hash)."""
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.SeedSequence([int(seed), int(epoch), digest])


def crop_box(rng: np.random.Generator, width: int, height: int, scale) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop: torchvision's RandomResizedCrop rule
    (area fraction in `scale`, aspect ratio log-uniform in 3/4..4/3, 10 tries, then a centre crop),
    drawn from the row's own stream."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height
    w, h = width, height
    if ratio < CROP_RATIO[0]:
        h = int(round(w / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        w = int(round(h * CROP_RATIO[1]))
    return (height - h) // 2, (width - w) // 2, h, w


def native_uint8_resize() -> bool:
    """Whether torch resizes uint8 images itself (bilinear, antialiased): on AVX2/AVX512 and ARM CPUs."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def resized_crop(image: torch.Tensor, top: int, left: int, height: int, width: int, size: list[int]) -> torch.Tensor:
    """A uint8 [3, H, W] image's crop resized to `size`, bilinear and antialiased: torchvision's
    `resized_crop` (the same values), without importing torchvision, which would add a second or
    more to every views worker's start-up."""
    crop = image[:, top : top + height, left : left + width]
    if [height, width] == list(size):
        return crop
    x = crop.unsqueeze(0)
    if native_uint8_resize():
        return interpolate(x, size=list(size), mode="bilinear", align_corners=False, antialias=True)[0]
    x = interpolate(x.float(), size=list(size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().to(torch.uint8)[0]


def decode(data, key: str, max_pixels: int, need: int) -> torch.Tensor:
    """The image as uint8 [3, H, W], decoded at a reduced scale when its short side is at least twice
    `need` (the smallest short side at which no crop is upsampled)."""
    width, height = image_size(data, key)
    factor = min(width, height) // need
    if factor < 2:
        img = decode_image(data, key, max_pixels)
    else:
        check_pixels(width, height, key, max_pixels)
        try:
            with Image.open(io.BytesIO(bytes(data)), formats=IMAGE_FORMATS) as raw:
                if raw.format == "JPEG":  # DCT scaling: decodes at 1/2, 1/4 or 1/8 size, at least the size asked
                    raw.draft("RGB", (width // factor, height // factor))
                img = raw.convert("RGB")
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as err:
            raise BadRow(key, "truncated", f"cannot decode: {err}") from None
        rest = min(img.size) // need
        if rest >= 2:
            img = img.reduce(rest)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def augmented(crops: torch.Tensor, draws: list) -> torch.Tensor:
    """uint8 crops [n, 3, H, W] through their drawn photometric augmentations (computed in float in
    [0, 1]), rounded back to uint8."""
    if not len(crops) or all(p.is_identity for p in draws):
        return crops
    x = photometric.apply(crops.float().div_(255), draws)
    return x.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


class TIPSViews:
    """A numpy batch of shard rows -> a numpy batch of training views.

    Output columns: global_crop uint8 [B,3,S,S] and local_crops uint8 [B,V,3,s,s] in 0..255,
    masks bool [B, patches], web_tokens and synthetic_tokens int64 [B, L], tags float32 multi-hot
    (with a tag vocabulary), epoch int64 (where the input has an `epoch` column), and, when the
    instance is called, the int64 counters of BAD_ROW_COLUMNS.
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        local_crops: int,
        local_crop_size: int,
        global_crop_scale,
        local_crop_scale,
        mask_ratio: float,
        tokenizer,
        tag_vocab=(),
        mask_mode: str = "random",
        augment: str = "none",
        seed: int = 0,
        epoch: int = 0,
        max_image_pixels: int = 40_000_000,
    ):
        # Checked here as well as by LossConfig and DataConfig: the arguments also come from callers
        # that make no experiment config (jobs/bench/data.py, tests).
        if mask_mode not in MASK_MODES:
            raise ConfigError(f"loss.mask_mode: {mask_mode!r} is not one of {MASK_MODES}")
        if augment not in AUGMENTS:
            raise ConfigError(f"data.augment: {augment!r} is not one of {AUGMENTS}")
        self.image_size, self.local_crop_size, self.local_crops = image_size, local_crop_size, local_crops
        self.global_crop_scale, self.local_crop_scale = tuple(global_crop_scale), tuple(local_crop_scale)
        self.patch_size, self.grid = patch_size, image_size // patch_size
        self.mask_ratio, self.mask_mode = mask_ratio, mask_mode
        self.augment = augment
        self.seed, self.epoch = seed, epoch
        self.max_image_pixels = max_image_pixels
        # The short side below which a crop of the smallest scale would be upsampled.
        smallest = [(image_size, self.global_crop_scale[0])]
        smallest += [(local_crop_size, self.local_crop_scale[0])] if local_crops else []
        self.decode_side = max(math.ceil(size / math.sqrt(max(scale, 0.01))) for size, scale in smallest)
        self.tokenizer = tokenizer
        self.tag_index = {tag: i for i, tag in enumerate(tag_vocab)}
        # For calls: counts of batches that had no good row, which have no output row to carry
        # them; they go out with this instance's next batch.
        self.carried = BadRows()

    def row_bytes(self) -> int:
        """`row_bytes` of these views."""
        return row_bytes(
            image_size=self.image_size,
            patch_size=self.patch_size,
            local_crops=self.local_crops,
            local_crop_size=self.local_crop_size,
        )

    def random_mask(self, rng: np.random.Generator) -> np.ndarray:
        return make_mask(rng, self.mask_mode, self.grid, self.mask_ratio)

    def read_row(self, batch: dict, i: int) -> dict:
        """One row checked and decoded, or BadRow."""
        key = check_key(batch["key"][i], f"row {i} of its batch")
        row = {
            "key": key,
            "image": decode(batch["image"][i], key, self.max_image_pixels, self.decode_side),
            "web_caption": check_caption(batch["web_caption"][i], key, "web_caption"),
            "synthetic_caption": check_caption(batch["synthetic_caption"][i], key, "synthetic_caption"),
        }
        if self.tag_index:
            row["tags"] = check_tags(batch["tags"][i], key)
        row["epoch"] = int(batch["epoch"][i]) if "epoch" in batch else self.epoch
        return row

    def crops(self, image: torch.Tensor, rng: np.random.Generator, flips) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The global crop and the local crops, uint8; flips[0] flips the global crop, flips[1:] the locals."""
        _, h, w = image.shape
        size, local = [self.image_size] * 2, [self.local_crop_size] * 2
        views = [resized_crop(image, *crop_box(rng, w, h, self.global_crop_scale), size)]
        for _ in range(self.local_crops):
            views.append(resized_crop(image, *crop_box(rng, w, h, self.local_crop_scale), local))
        views = [view.flip(-1) if flip else view for view, flip in zip(views, flips)]
        return views[0], views[1:]

    def draw_augment(self, rng: np.random.Generator) -> list[tuple[bool, photometric.Photometric]]:
        """DINOv2's flip (p 0.5) and photometric draw for the global crop, then each local crop. The
        one global crop is DINOv2's first or second global view with even odds."""
        if self.augment == "none":
            return [(False, None)] * (1 + self.local_crops)
        kinds = [photometric.GLOBAL_1 if rng.random() < 0.5 else photometric.GLOBAL_2]
        kinds += [photometric.LOCAL] * self.local_crops
        return [(bool(rng.random() < 0.5), photometric.draw(rng, kind)) for kind in kinds]

    def views(self, batch: dict) -> tuple[dict | None, BadRows]:
        """The views of the batch's good rows (None when it has none, every row being bad) and the
        batch's counts: every row seen, the bad ones by reason."""
        bad = BadRows()
        bad.seen(len(batch["key"]))
        rows = []
        for i in range(len(batch["key"])):
            try:
                rows.append(self.read_row(batch, i))
            except BadRow as err:  # a bad row is skipped, named and counted, never fatal
                log.warning("skipping %s", err)
                bad.add(err)
        if not rows:
            return None, bad
        globals_, locals_, masks, draws = [], [], [], []
        for row in rows:
            streams = row_seed(self.seed, row["epoch"], row["key"]).spawn(3)
            crop_rng, augment_rng, mask_rng = (np.random.default_rng(s) for s in streams)
            drawn = self.draw_augment(augment_rng)
            g, ls = self.crops(row["image"], crop_rng, [flip for flip, _ in drawn])
            globals_.append(g)
            locals_.extend(ls)
            masks.append(self.random_mask(mask_rng))
            draws.append([p for _, p in drawn])
        n, v = len(rows), self.local_crops
        global_crop = torch.stack(globals_)
        local_crops = (
            torch.stack(locals_)
            if v
            else torch.zeros(0, 3, self.local_crop_size, self.local_crop_size, dtype=torch.uint8)
        )
        if self.augment != "none":
            global_crop = augmented(global_crop, [d[0] for d in draws])
            local_crops = augmented(local_crops, [p for d in draws for p in d[1:]])
        out = {
            "global_crop": global_crop.numpy(),
            "local_crops": local_crops.reshape(n, v, 3, self.local_crop_size, self.local_crop_size).numpy(),
            "masks": np.stack(masks),
            "web_tokens": self.tokenizer.encode([r["web_caption"] for r in rows]),
            "synthetic_tokens": self.tokenizer.encode([r["synthetic_caption"] for r in rows]),
        }
        if self.tag_index:
            out["tags"] = self.multi_hot([r["tags"] for r in rows])
        if "epoch" in batch:
            out["epoch"] = np.array([r["epoch"] for r in rows], dtype=np.int64)
        return out, bad

    def __call__(self, batch: dict) -> dict:
        """The batch's views with its counters (BAD_ROW_COLUMNS) on the last row. A batch with no
        good row comes out empty; its counts go out with this instance's next batch, so a caller
        whose last batch had none loses them (the training pipeline places counts itself)."""
        out, bad = self.views(batch)
        bad = self.carried.merge(bad)
        if out is None:
            self.carried = bad
            return self.empty()
        self.carried = BadRows()
        out.update(count_columns(BAD_ROW_COLUMNS, bad_row_counts(bad), len(out["masks"])))
        return out

    def empty(self) -> dict:
        """A batch of no rows with the columns' shapes and types (every row of the batch was bad)."""
        s, ls, v = self.image_size, self.local_crop_size, self.local_crops
        out = {
            "global_crop": np.zeros((0, 3, s, s), np.uint8),
            "local_crops": np.zeros((0, v, 3, ls, ls), np.uint8),
            "masks": np.zeros((0, self.grid**2), bool),
            "web_tokens": self.tokenizer.encode([]),
            "synthetic_tokens": self.tokenizer.encode([]),
        }
        if self.tag_index:
            out["tags"] = np.zeros((0, len(self.tag_index)), np.float32)
        out.update({name: np.zeros(0, np.int64) for name in BAD_ROW_COLUMNS})
        return out

    def multi_hot(self, rows) -> np.ndarray:
        """Tags outside the vocabulary are ignored (the vocabulary keeps frequent tags only)."""
        targets = np.zeros((len(rows), len(self.tag_index)), dtype=np.float32)
        for r, tags in enumerate(rows):
            for tag in tags:
                if tag in self.tag_index:
                    targets[r, self.tag_index[tag]] = 1.0
        return targets


def row_bytes(*, image_size: int, patch_size: int, local_crops: int, local_crop_size: int, **_) -> int:
    """The bytes of one views row's crops and mask: the bulk of a row (its tokens, tags and counters
    add about 1% at 224 px). Takes `view_options`' keywords."""
    return 3 * image_size**2 + local_crops * 3 * local_crop_size**2 + (image_size // patch_size) ** 2


def view_options(exp) -> dict:
    """TIPSViews' keyword arguments that come straight from the experiment config; the caller adds
    tokenizer and tag_vocab (the training rows carry their epoch)."""
    exp = experiment(exp)
    model, data, loss = exp.model, exp.data, exp.loss
    return dict(
        image_size=model.image_size,
        patch_size=model.patch_size,
        local_crops=data.local_crops,
        local_crop_size=data.local_crop_size,
        global_crop_scale=list(data.global_crop_scale),
        local_crop_scale=list(data.local_crop_scale),
        mask_ratio=loss.mask_ratio,
        mask_mode=loss.mask_mode,
        augment=data.augment,
        seed=exp.train.seed,
        max_image_pixels=data.max_image_pixels,
    )
