"""Configuration owned by the jobs layer: data pipeline, training loop, evaluation."""
from dataclasses import dataclass, field


@dataclass
class DataConfig:
    source: str = "scenes"  # scenes: procedural scenes made on demand under `root`
    root: str = ""  # one folder of shards per split; empty: $TIPSLAB_HOME/data/scenes
    train_split: str = "train"
    scenes_train: int = 1024  # how many scenes each split has when tipslab makes them
    scenes_probe: int = 256
    scene_seed: int = 0
    batch_size: int = 32  # per worker
    local_crops: int = 2  # DINOv2 uses 8 crops of 98 px (unverified for TIPS)
    local_crop_size: int = 56
    global_crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.25, 0.5])
    # The tag vocabulary (one tag per line) for L_tag: the shards' `tags` become multi-hot targets
    # over it, and model.num_tags follows from it. Empty: no tags in the batches.
    tag_vocab: str = ""
    # CPUs that Ray Data may use for reading, decoding and making views, per trial.
    cpus: float = 1.0
    # Bad rows (undecodable or truncated images, empty captions, wrong types) are skipped, named and
    # counted wherever they are met. An image whose header declares more pixels than this is bad
    # and is never decoded.
    max_image_pixels: int = 40_000_000
    # Past this fraction of bad rows among those seen, the job stops with an error.
    max_bad_fraction: float = 0.05


@dataclass
class TrainConfig:
    steps: int = 150
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 15
    # Cosine from weight_decay to weight_decay_end (DINOv2: 0.04 -> 0.4; unverified for TIPS).
    weight_decay: float = 0.05
    weight_decay_end: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 5
    checkpoint_every: int = 0  # 0: only at the end
    num_workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    # EMA teacher momentum and temperature schedules (DINOv2 defaults, unverified for TIPS).
    teacher_momentum: float = 0.992
    teacher_momentum_end: float = 1.0
    teacher_temp_end: float = 0.07
    teacher_temp_warmup_steps: int = 30


@dataclass
class EvalConfig:
    dataset: str = "scenes"
    probe_train_split: str = "probe_train"
    probe_test_split: str = "probe_test"
    # Retrieval compares a CLS embedding with text embeddings. The paper uses CLS_1 on human
    # captions; on scenes the reference caption is the synthetic description, so "auto" takes the
    # token trained on that caption column: CLS_2 under dual_cls, CLS_1 in every other caption mode.
    retrieval_token: str = "auto"  # auto | cls_web | cls_synthetic
    retrieval_caption: str = "synthetic_caption"
    seg_probe_epochs: int = 60
    seg_probe_lr: float = 0.05
    batch_size: int = 64
