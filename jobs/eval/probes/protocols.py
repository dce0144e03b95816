"""Which protocol a dense probe follows on a dataset, by name (docs/probes.md).

Segmentation: `patch_grid` (the cheap variant: trained on labels sampled at the patch grid) or
`linear_upsampled` (DINOv2's linear protocol: the logits upsampled to the whole label map in
training and scoring). Depth: `scenes_bins` (the cheap variant) or `dinov2_linear` (DINOv2's
"lin. 1"). `auto` picks the standard protocol on standard datasets and the cheap one on the probe
splits of shards, whose numbers long experiments compare across runs.
"""

from tipslab.jobs.config import EvalConfig

KEYS = {"segmentation": "seg_protocol", "depth": "depth_protocol"}  # probe -> its eval.* key
STANDARD = {"segmentation": "linear_upsampled", "depth": "dinov2_linear"}
CHEAP = {"segmentation": "patch_grid", "depth": "scenes_bins"}


def resolve(probe: str, ev: EvalConfig, standard: bool) -> str | None:
    """The protocol `probe` follows on a standard dataset (`standard`) or a probe split; None for a
    probe that has one way only."""
    if probe not in KEYS:
        return None
    chosen = getattr(ev, KEYS[probe])
    if chosen != "auto":
        return chosen
    return (STANDARD if standard else CHEAP)[probe]


def label_size(ev: EvalConfig, probes, standard: bool, image_size: int) -> int:
    """The side of a dataset's dense label maps: eval.dense_label_size for a standard dataset that
    one of `probes` scores under a standard protocol, else the model's image size (the probe
    splits' labels are rendered at the image size: a larger map would only repeat pixels)."""
    if standard and ev.dense_label_size and any(resolve(p, ev, standard) in STANDARD.values() for p in probes):
        return ev.dense_label_size
    return image_size
