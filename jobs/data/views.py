"""The TIPS training views of one image, made on CPU in the data pipeline (not in the model).

One global crop (it feeds the contrastive loss, the teacher, and, masked, the MIM student), N local
crops for self-distillation, a random patch mask at the configured ratio, and both captions
tokenised. No flips and no colour jitter by default: the synthetic captions say "left of" and name
colours, and a flipped or recoloured image would contradict its caption.
"""
import io
import logging

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2


log = logging.getLogger(__name__)


class TIPSViews:
    """A Ray Data batch function: a numpy batch of shard rows -> a numpy batch of training views."""

    def __init__(self, *, image_size: int, patch_size: int, local_crops: int, local_crop_size: int,
                 global_crop_scale, local_crop_scale, mask_ratio: float, tokenizer, tag_vocab=()):
        self.num_patches = (image_size // patch_size) ** 2
        self.num_masked = int(round(mask_ratio * self.num_patches))
        self.local_crops = local_crops
        self.global_crop = v2.RandomResizedCrop(image_size, scale=tuple(global_crop_scale), antialias=True)
        self.local_crop = v2.RandomResizedCrop(local_crop_size, scale=tuple(local_crop_scale), antialias=True)
        self.tokenizer = tokenizer
        self.tag_index = {tag: i for i, tag in enumerate(tag_vocab)}

    def random_mask(self, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros(self.num_patches, dtype=bool)
        mask[rng.choice(self.num_patches, self.num_masked, replace=False)] = True
        return mask

    def __call__(self, batch: dict) -> dict:
        rng = np.random.default_rng()
        images, keep = [], []
        for i, data in enumerate(batch["image"]):
            try:
                with Image.open(io.BytesIO(data)) as img:
                    images.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
                keep.append(i)
            except Exception as err:  # a corrupt row is skipped, not fatal
                log.warning("skipping row %s: cannot decode image (%s)", batch["key"][i], err)
        global_crops = torch.stack([self.global_crop(x) for x in images]).float() / 255.0
        local_crops = torch.stack([
            torch.stack([self.local_crop(x) for _ in range(self.local_crops)]) for x in images
        ]).float() / 255.0
        out = {
            "global_crop": global_crops.numpy(),
            "local_crops": local_crops.numpy(),
            "masks": np.stack([self.random_mask(rng) for _ in keep]),
            "web_tokens": self.tokenizer.encode([batch["web_caption"][i] for i in keep]),
            "synthetic_tokens": self.tokenizer.encode([batch["synthetic_caption"][i] for i in keep]),
        }
        if self.tag_index:
            out["tags"] = self.multi_hot([batch["tags"][i] for i in keep])
        return out

    def multi_hot(self, rows) -> np.ndarray:
        """Tags outside the vocabulary are ignored (the vocabulary keeps frequent tags only)."""
        targets = np.zeros((len(rows), len(self.tag_index)), dtype=np.float32)
        for r, tags in enumerate(rows):
            for tag in tags if tags is not None else ():
                if tag in self.tag_index:
                    targets[r, self.tag_index[tag]] = 1.0
        return targets
