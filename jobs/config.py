"""Configuration owned by the jobs layer: data pipeline, training loop, evaluation, and the
experiment that composes them with the model layer's sections.

Every section checks its own values when it is made (`check`, run by `__post_init__`), raising
`ConfigError` with the dotted key; `ExperimentConfig` adds the checks across sections. Jobs take an
`ExperimentConfig`; their entry points also accept a DictConfig or a plain dict (a checkpoint's
stored config, a test's), which `experiment` turns into one.
"""

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tipslab.jobs.config_ranges import DATA_RANGES, EVAL_RANGES, MAX_STEPS, TRAIN_RANGES  # noqa: F401
from tipslab.models.config import CLS_TOKENS, LossConfig, ModelConfig, bad, check_ranges, one_of
from tipslab.models.errors import ConfigError

STRATEGIES = ("ddp", "fsdp")  # train.strategy
# train.compile_mode: torch.compile's modes ("reduce-overhead" and "max-autotune" add CUDA graphs on cuda)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# train.*: each warm-up as a step count or a fraction of its stage's steps (one of the two is 0).
WARMUPS = (("warmup_steps", "warmup_fraction"), ("teacher_temp_warmup_steps", "teacher_temp_warmup_fraction"))
AUGMENTS = ("none", "dinov2")  # data.augment
# eval.probes: the probes of jobs/eval/probes, in run order.
# web_retrieval: retrieval on a sharded probe split against its web captions with CLS_1, beside
# `retrieval` against eval.retrieval_caption (the paper checks both caption kinds).
ALL_PROBES = ("zero_shot", "retrieval", "web_retrieval", "segmentation", "depth", "normals", "knn")
ZERO_SHOT_TEMPLATE_SETS = ("openai", "simple", "own")  # eval.zero_shot_template_set
RETRIEVAL_CAPTIONS = ("web_caption", "synthetic_caption")  # eval.retrieval_caption
# eval.seg_protocol, eval.depth_protocol (docs/probes.md): auto = the standard protocol on the
# standard datasets (pascal_voc, ade20k, nyuv2), the cheap one on the probe splits of shards.
SEG_PROTOCOLS = ("auto", "patch_grid", "linear_upsampled")
DEPTH_PROTOCOLS = ("auto", "scenes_bins", "dinov2_linear")
SOURCES = ("scenes", "shards")  # data.source


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
    # A rank's views run in a pool of actors (one per CPU of its share) when its stage has at least
    # this many rows (over all its epochs: one dataset spans them): the pool's start-up (a process per
    # actor importing torch, the tokenizer; 5-20 s on 2 busy cores) is paid once per stage and is then
    # small next to it. Below it, in Ray tasks, which reuse idle worker processes. 0: always actors.
    views_actor_rows: int = 20000
    # Bad rows (undecodable or truncated images, empty captions, wrong types) are skipped, named and
    # counted wherever they are met. An image whose header declares more pixels than this is bad
    # and is never decoded.
    max_image_pixels: int = 40_000_000
    # Past this fraction of bad rows among those seen, the job stops with an error.
    max_bad_fraction: float = 0.05
    # none | dinov2: DINOv2's flips, colour jitter, grayscale, blur and solarisation on every view.
    # Off by default: the scenes' synthetic captions name colours and left/right, which these change.
    augment: str = "none"

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        check_ranges("data", self, DATA_RANGES)
        one_of("data.source", self.source, SOURCES)
        one_of("data.augment", self.augment, AUGMENTS)
        for key in ("global_crop_scale", "local_crop_scale"):
            scale = getattr(self, key)
            if len(scale) != 2 or not all(math.isfinite(v) for v in scale) or not 0 < scale[0] <= scale[1] <= 1:
                bad(f"data.{key}", f"{list(scale)} is not [low, high] with 0 < low <= high <= 1")


@dataclass
class StageConfig:
    """One phase of training. The next stage starts from this one's weights and teacher, with a
    fresh optimizer and its own warmup + cosine schedules over its own `steps`."""

    name: str = ""
    steps: int = 0
    # Dotted experiment keys applied on top of the run's config for this stage only, e.g.
    # {loss.mim_weight: 0} for "CLIP first", {model.image_size: 448} for high-resolution adaptation.
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    # Total optimizer steps. With `stages`, the sum of the stages' steps (derived).
    steps: int = 150
    lr: float = 1e-3
    min_lr: float = 1e-5
    # The lr warm-up of each stage: `warmup_steps` steps, or `warmup_fraction` of the stage's steps
    # (so a 70k-step and a 2k-step run both warm up sensibly; DINOv2: 10 of 100 epochs, 0.1). Give
    # one: a fraction > 0 needs warmup_steps: 0.
    warmup_steps: int = 15
    warmup_fraction: float = 0.0
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
    # The teacher temperature's linear warm-up (loss.teacher_temp -> teacher_temp_end) in each stage:
    # steps, or a fraction of the stage's steps (DINOv2: 30 of 100 epochs, 0.3). Give one, as above.
    # The momentum and weight-decay cosines always span the whole stage.
    teacher_temp_warmup_steps: int = 30
    teacher_temp_warmup_fraction: float = 0.0
    # Phases run in order (TIPS: CLIP first then MIM; 224 -> 448 px adaptation). Empty: one stage
    # of `steps` with the run's config as it is.
    stages: list[StageConfig] = field(default_factory=list)
    checkpoints_to_keep: int = 2
    # Ray Train restarts the worker group this many times after a worker or node failure, each
    # time from the latest checkpoint. A non-finite loss is never retried.
    max_failures: int = 3
    # Every N steps, a cheap retrieval probe on `probe_images` probe-split images, reported under
    # the final eval's keys (eval/<dataset>/...) so that early-stopping schedulers can act. 0: off.
    probe_every: int = 0
    probe_images: int = 64
    # The eval keys the periodic probe reports (jobs/train/periodic.py: retrieval on the probe splits
    # and caption datasets, the dense probes on any dataset with their labels, each on `probe_images`
    # images of each split). Empty: eval/<eval.dataset>/i2t_r1 and t2i_r1 on the probe-test split.
    probe_metrics: list[str] = field(default_factory=list)
    prefetch_batches: int = 2  # per worker, taken ahead of the training step in whole views blocks (0: one block)
    # ddp: every worker holds the whole model and optimizer (DistributedDataParallel). fsdp: FSDP2
    # shards the student, its EMA teacher and the optimizer over the workers (what the L and g sizes
    # need); its checkpoints hold each rank's shards (torch.distributed.checkpoint, which can reshard
    # them for another number of workers) beside the whole weights in model.pt, which evaluation
    # reads as with ddp. A run resumes only with the strategy that wrote its checkpoint (jobs/train/loop.py).
    strategy: str = "ddp"  # ddp | fsdp
    # The Ray Train run's name, its folder in the run storage. Empty: made from the sweep and trial.
    # Training again under an existing name resumes that run from its latest checkpoint
    # (`tipslab train CONFIG --resume NAME` sets it).
    run_name: str = ""
    compile: bool = False  # torch.compile the student (GPU runs)
    compile_mode: str = "default"  # with train.compile: one of COMPILE_MODES
    # Recompute each transformer block's activations in the backward instead of holding them (the
    # student's vision and text towers): less memory for a bigger batch, about a forward more compute.
    activation_checkpointing: bool = False

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """The stages are checked where they are composed (orchestrator/config.py check_stages)."""
        check_ranges("train", self, TRAIN_RANGES)
        one_of("train.strategy", self.strategy, STRATEGIES)
        one_of("train.compile_mode", self.compile_mode, COMPILE_MODES)
        for steps, fraction in WARMUPS:
            n, f = getattr(self, steps), getattr(self, fraction)
            if n and f:
                bad(
                    f"train.{fraction}",
                    f"{f} and train.{steps}: {n} both set the warm-up; give one "
                    f"(train.{steps}=0 to use the fraction, or train.{fraction}=0)",
                )

    def lr_warmup(self) -> int:
        """Steps of the lr warm-up in a stage of `self.steps` steps."""
        return self._warmup(self.warmup_steps, self.warmup_fraction)

    def teacher_temp_warmup(self) -> int:
        """Steps of the teacher-temperature warm-up in a stage of `self.steps` steps."""
        return self._warmup(self.teacher_temp_warmup_steps, self.teacher_temp_warmup_fraction)

    def _warmup(self, steps: int, fraction: float) -> int:
        """The step count, or the fraction of the stage (at least one step when above 0); never
        more than the stage."""
        n = max(1, round(fraction * self.steps)) if fraction > 0 else steps
        return min(n, self.steps)


@dataclass
class EvalConfig:
    # The name under which the probe splits of `data.root` are reported (eval/<dataset>/<metric>);
    # empty: those splits are not evaluated.
    dataset: str = "scenes"
    probe_train_split: str = "probe_train"
    probe_test_split: str = "probe_test"
    # Which probes run (jobs/eval/probes): zero_shot, retrieval, web_retrieval, segmentation, depth,
    # normals, knn. Each dataset runs those of them that its labels allow.
    probes: list[str] = field(default_factory=lambda: list(ALL_PROBES))
    # Standard-format datasets evaluated besides the probe splits: {name: folder}, names from
    # jobs/eval/evalsets (imagenet, coco, flickr30k, pascal_voc, ade20k, nyuv2).
    datasets: dict[str, str] = field(default_factory=dict)
    # Retrieval compares a CLS embedding with text embeddings. The paper uses CLS_1 on human
    # captions; on scenes the reference caption is the synthetic description, so "auto" takes the
    # token trained on that caption column: CLS_2 under dual_cls, CLS_1 in every other caption mode.
    retrieval_token: str = "auto"  # auto | cls_web | cls_synthetic
    retrieval_caption: str = "synthetic_caption"
    # CLS tokens of the global probes; the paper uses CLS_1 (the web-caption token) for both.
    zero_shot_token: str = "cls_web"
    knn_token: str = "cls_web"
    # Zero-shot prompts: each class name through every template, embeddings averaged (CLIP's
    # ensembling). TIPS does not list its templates; "openai" is the published set of 80 ImageNet
    # templates (CLIP), "simple" its 7-template subset, both as open_clip ships them, so numbers
    # compare with published zero-shot results; "own" takes eval.zero_shot_templates ("{}" = name).
    zero_shot_template_set: str = "openai"
    zero_shot_templates: list[str] = field(default_factory=list)
    # Temperature-weighted KNN votes, DINO's k = 20 and T = 0.07 (TIPS does not state its own).
    knn_k: int = 20
    knn_temperature: float = 0.07
    # Linear dense probes on frozen patch tokens (DINOv2 protocol, small): full-batch AdamW.
    seg_probe_epochs: int = 60
    seg_probe_lr: float = 0.05
    depth_probe_epochs: int = 60
    depth_probe_lr: float = 0.05
    # Depth as classification over uniform bins on (0, depth_max] metres, read out as the
    # probability-weighted mean of the bin centres: DINOv2's "lin. 1" uses 256 bins and caps NYUv2
    # at 10 m (inferred for TIPS). depth_max 0: the dataset's own cap (NYUv2: 10 m), else the largest
    # probe-train depth (the scenes' floors reach far beyond 10 m).
    depth_bins: int = 256
    depth_max: float = 0.0
    # Dense probes train on labels resized (nearest) to this many pixels a side, with the logits
    # upsampled to it (DINOv2 trains at the label size); 0: the patch grid, which keeps CPU probes
    # to seconds. They are always scored at the model's image size.
    dense_train_size: int = 0
    # Which protocol each dense probe follows (docs/probes.md). patch_grid / scenes_bins: the cheap
    # variants above (labels sampled at the patch grid for training; the scenes' numbers).
    # linear_upsampled: DINOv2's linear segmentation, the logits upsampled bilinearly to the whole
    # label map in training and scoring. dinov2_linear: DINOv2's "lin. 1" depth (CLS token
    # concatenated to every patch token, 256 bins read out as a depth, SILog loss, the dataset's
    # evaluation crop: NYUv2's Eigen crop). auto: the standard one on pascal_voc, ade20k and nyuv2,
    # the cheap one on the probe splits.
    seg_protocol: str = "auto"
    depth_protocol: str = "auto"
    # Side of the label maps of a standard dataset scored under a standard protocol: DINOv2 scores
    # segmentation at 512 x 512 (its ADE20k and VOC crops). 0: the model's image size.
    dense_label_size: int = 512
    # dinov2_linear's bins on [1 mm, depth max]: linear (DINOv2's "UD", its default) | log.
    depth_bin_spacing: str = "linear"
    # features.npz keeps the patch tokens of this many fixed probe-test images (the report's PCA maps).
    pca_images: int = 4
    batch_size: int = 64

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        check_ranges("eval", self, EVAL_RANGES)
        for name, folder in self.datasets.items():
            if not isinstance(folder, str) or not folder:
                bad(f"eval.datasets.{name}", f"{folder!r} is not the dataset's folder")
        unknown = sorted(set(self.probes) - set(ALL_PROBES))
        if unknown:
            bad("eval.probes", f"unknown probes {unknown}; known: {', '.join(ALL_PROBES)}")
        one_of("eval.retrieval_token", self.retrieval_token, ("auto", *CLS_TOKENS))
        if self.retrieval_caption not in RETRIEVAL_CAPTIONS:
            bad("eval.retrieval_caption", f"{self.retrieval_caption!r} is not web_caption or synthetic_caption")
        if self.zero_shot_template_set not in ZERO_SHOT_TEMPLATE_SETS:
            bad("eval.zero_shot_template_set", f"{self.zero_shot_template_set!r} is not in {ZERO_SHOT_TEMPLATE_SETS}")
        if self.zero_shot_template_set == "own" and (
            not self.zero_shot_templates or any("{}" not in t for t in self.zero_shot_templates)
        ):
            bad("eval.zero_shot_templates", "with zero_shot_template_set: own, give templates that each hold {}")
        one_of("eval.seg_protocol", self.seg_protocol, SEG_PROTOCOLS)
        one_of("eval.depth_protocol", self.depth_protocol, DEPTH_PROTOCOLS)
        one_of("eval.depth_bin_spacing", self.depth_bin_spacing, ("linear", "log"))
        for key in ("zero_shot_token", "knn_token"):
            if getattr(self, key) not in CLS_TOKENS:
                bad(f"eval.{key}", f"{getattr(self, key)!r} is not cls_web or cls_synthetic")


@dataclass
class ExperimentConfig:
    """One experiment: each layer's sections. The orchestrator composes it from YAML files and
    command-line overrides (orchestrator/config.py); jobs read it by attribute."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Checks across sections (each section checked its own values when it was made)."""
        if self.data.local_crop_size % self.model.patch_size:
            bad("data.local_crop_size", f"{self.data.local_crop_size} is not a multiple of model.patch_size")
        if self.loss.distill_weight > 0 and self.data.local_crops < 1:
            bad("data.local_crops", "self-distillation (loss.distill_weight > 0) needs at least one local crop")


def typed(cls, cfg, prefix: str = ""):
    """`cfg` (an instance of the structured config class `cls`, a DictConfig or a mapping, missing
    keys taking their defaults) as an instance of `cls`, its values checked. Unknown keys and wrong
    types raise ConfigError naming the key (`prefix` + its dotted path)."""
    if isinstance(cfg, cls):
        return cfg
    made = direct(cls, cfg)
    if made is not None:
        return made
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), cfg if cfg is not None else {}))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"{prefix}{key}: {msg}") from None


NOT_PLAIN = object()


def direct(cls, data):
    """`cls(**data)`, its sections made alike, when `data` is a plain dict with exactly `cls`'s
    fields, each of its declared type (what `as_dict` or a resolved spec wrote): what `typed` makes,
    values checked all the same, in a thousandth of the time (a spec of a thousand rows is typed
    once per row). None for anything else, which OmegaConf checks and converts."""
    if not isinstance(data, dict) or data.keys() != {f.name for f in dataclasses.fields(cls)}:
        return None
    hints = typing.get_type_hints(cls)
    kwargs = {name: plain(hints[name], value) for name, value in data.items()}
    return None if any(v is NOT_PLAIN for v in kwargs.values()) else cls(**kwargs)


def plain(hint, value):
    """`value` as the type `hint` (a float from an int), or NOT_PLAIN when it is not one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        made = direct(hint, value)
        return NOT_PLAIN if made is None else made
    if origin is list and isinstance(value, list):
        items = [plain(args[0], v) for v in value]
        return NOT_PLAIN if any(v is NOT_PLAIN for v in items) else items
    if origin is dict and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        items = {k: plain(args[1], v) for k, v in value.items()}
        return NOT_PLAIN if any(v is NOT_PLAIN for v in items.values()) else items
    if hint is Any:
        return json.loads(json.dumps(value)) if isinstance(value, (str, int, float, list, dict)) else NOT_PLAIN
    if hint is bool or hint is str:
        return value if type(value) is hint else NOT_PLAIN
    if hint is int:
        return value if type(value) is int else NOT_PLAIN
    if hint is float:
        return float(value) if type(value) in (int, float) else NOT_PLAIN
    return NOT_PLAIN


def experiment(cfg) -> ExperimentConfig:
    """An ExperimentConfig from an ExperimentConfig (returned as it is), a DictConfig or a plain dict."""
    return typed(ExperimentConfig, cfg)


def eval_config(cfg) -> EvalConfig:
    """An EvalConfig from an EvalConfig, a DictConfig or a plain dict (an experiment's `eval`)."""
    return typed(EvalConfig, cfg, "eval.")


def as_dict(exp) -> dict:
    """The experiment as a plain dict of built-in types (a checkpoint's `config`, JSON)."""
    return dataclasses.asdict(experiment(exp))


def read_tag_vocab(path: str) -> list[str]:
    """The tags of a `data.tag_vocab` file, one per line (`tipslab data tags` writes it)."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]
