"""The range of every numeric key of the jobs' config sections (data, train, eval), checked by
models/config.py `check_ranges` when a section is made: (low, high), both allowed; a low of
POSITIVE means above 0. 0 where it means "off" or "only at the end"; retries bounded (never endless)."""

from tipslab.models.config import COUNT, POSITIVE, SIZE

MAX_STEPS = 10**8  # train.steps: 10x the longest run of the paper's family (DINOv2: 625k iterations)
DATA_RANGES = {
    **dict.fromkeys(("scenes_train", "scenes_probe"), (1, COUNT)),
    "scene_seed": (0, COUNT),
    "batch_size": (1, SIZE),
    "local_crops": (0, 64),
    "local_crop_size": (1, 16384),
    "cpus": (POSITIVE, 1 << 16),
    "views_actor_rows": (0, 10**12),
    "max_image_pixels": (1, 10**10),
    "max_bad_fraction": (0, 1),
}
TRAIN_RANGES = {
    "steps": (1, MAX_STEPS),
    **dict.fromkeys(("lr", "min_lr"), (0, 10)),
    **dict.fromkeys(("warmup_steps", "checkpoint_every", "teacher_temp_warmup_steps", "probe_every"), (0, MAX_STEPS)),
    **dict.fromkeys(("warmup_fraction", "teacher_temp_warmup_fraction"), (0, 1)),  # of the stage's steps
    **dict.fromkeys(("weight_decay", "weight_decay_end"), (0, 100)),
    "grad_clip": (0, 1e6),  # 0: no clipping
    "seed": (0, 2**32 - 1),  # numpy's seeds
    "log_every": (1, MAX_STEPS),
    "num_workers": (1, 1 << 16),
    "gpus_per_worker": (0, 64),
    "cpus_per_worker": (0, 1 << 16),
    **dict.fromkeys(("teacher_momentum", "teacher_momentum_end"), (0, 1)),
    "teacher_temp_end": (POSITIVE, 100),
    "checkpoints_to_keep": (1, 10_000),
    "max_failures": (0, 1000),  # Ray Train's -1 (retry forever) is refused: a crash loop must end
    "probe_images": (1, COUNT),
    "prefetch_batches": (0, 1024),
}
EVAL_RANGES = {
    "knn_k": (1, 1 << 20),
    **dict.fromkeys(("knn_temperature", "seg_probe_lr", "depth_probe_lr"), (POSITIVE, 100)),
    **dict.fromkeys(("seg_probe_epochs", "depth_probe_epochs"), (1, 1 << 20)),
    "depth_bins": (1, 1 << 16),
    "depth_max": (0, 1e6),  # 0: the dataset's own cap
    "dense_train_size": (0, 16384),
    "dense_label_size": (0, 16384),  # 0: the model's image size
    "pca_images": (0, 1 << 16),
    "batch_size": (1, SIZE),
}
