"""`tipslab bench data`: the TIPS view pipeline on Ray Data against a torch DataLoader, on the same
shards, views and CPUs (jobs/bench/data.py); the result goes to MLflow (`tipslab-bench`)."""

import os

from .bench_runs import log_cpu_bench, printed_json, typed_experiment
from .errors import PATH_ERRORS, UserError
from .plan import BENCH_EXPERIMENT as EXPERIMENT


def cmd_bench_data(args) -> None:
    """B2's measurement (jobs/bench/data.py) on the given shards, or on procedural scenes made at the
    views' image size in a folder of their own (the training scenes are left as they are)."""
    from tipslab.jobs.bench.data import bench_data

    from .meter import ensure_scenes_shown
    from .runtime import ensure_ray, home

    if args.repeats < 1:  # before scenes are made or Ray starts
        raise UserError(f"--repeats: must be at least 1, got {args.repeats}")
    shards = args.shards
    if shards is None:
        root = str(home() / "data" / f"bench-scenes-{args.image_size}")
        exp = typed_experiment(
            None,
            None,
            [
                f"data.root={root}",
                f"model.image_size={args.image_size}",
                f"data.scenes_train={args.scenes}",
                "data.scenes_probe=1",
            ],
        )
        ensure_scenes_shown(exp)
        shards = os.path.join(exp.data.root, exp.data.train_split)
    cluster = ensure_ray(args.address)
    cpus = args.cpus or int(cluster.get("CPU", 1))
    try:
        result = bench_data(
            shards,
            cpus=cpus,
            batch_size=args.batch_size,
            rows=args.rows,
            epochs=args.epochs,
            image_size=args.image_size,
            local_crops=args.local_crops,
            local_crop_size=args.local_crop_size,
            augment=args.augment,
            mask_mode=args.mask_mode,
            views=args.views,
            repeats=args.repeats,
        )
    except PATH_ERRORS as err:  # bad shards or settings are UserErrors already
        raise UserError(str(err)) from None
    result["shards"] = shards
    metrics = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    log_cpu_bench("data", "none", result, metrics, {k: result[k] for k in ("shards", "augment", "mask_mode", "views")})
    if printed_json(args, result):
        return
    print_bench_data(result, cpus, shards)
    print(f"MLflow run {result['mlflow_run_id']} ({EXPERIMENT})")


def print_bench_data(result: dict, cpus: int, shards: str) -> None:
    """`bench data`'s figures, one pipeline a line (its run of median rate), then their ratio."""
    print(
        f"TIPS views ({result['image_size']} px global crop, {result['local_crops']} local crops of "
        f"{result['local_crop_size']} px, {result['augment']} augmentation) on {cpus} CPUs, shards {shards}, "
        f"{result['epochs']} epochs, Ray Data's views in {result['views']}:"
    )
    for name, key in (("Ray Data", "raydata"), ("torch DataLoader", "dataloader")):
        print(
            f"  {name:<17} {result[f'{key}_images_per_s']:>8.1f} images/s ({result[f'{key}_images_per_s_per_cpu']:.1f} "
            f"per CPU), start-up {result[f'{key}_startup_s']:.1f} s"
        )
    ready = (  # tasks start in processes Ray has running: no actors to wait for
        f"; its views actors ready after {result['raydata_actors_ready_s']:.1f} s, then "
        f"{result['raydata_ready_images_per_s']:.1f} images/s ({result['ready_ratio']:.2f} of the DataLoader's)"
        if result["views"] == "actors"
        else ""
    )
    pairs = result.get("ratios", [])
    spread = f" (median of {len(pairs)} pairs: {', '.join(f'{r:.2f}' for r in pairs)})" if len(pairs) > 1 else ""
    print(f"  Ray Data / DataLoader: {result['ratio']:.2f}{spread}{ready}")


def add_data_parser(bench_sub) -> None:
    data = bench_sub.add_parser("data", help="the TIPS view pipeline: Ray Data vs a torch DataLoader, images/s")
    data.add_argument("--shards", help="a folder of shards (default: procedural scenes made at --image-size)")
    data.add_argument("--scenes", type=int, default=512, help="how many scenes to make when no --shards is given")
    data.add_argument("--rows", type=int, default=0, help="images of an epoch through each pipeline (0: all)")
    data.add_argument(
        "--epochs", type=int, default=3, help="epochs over those rows, one dataset for all (as a training stage)"
    )
    data.add_argument("--cpus", type=int, default=0, help="CPUs for each pipeline (default: the Ray cluster's)")
    data.add_argument("--batch-size", type=int, default=32)
    data.add_argument("--image-size", type=int, default=224, help="the global crop, px")
    data.add_argument("--local-crops", type=int, default=2)
    data.add_argument("--local-crop-size", type=int, default=96)
    data.add_argument("--augment", default="dinov2", help="the views' augmentation (jobs/data/pipeline/views.py)")
    data.add_argument("--mask-mode", default="random", help="random | blockwise")
    data.add_argument(
        "--views",
        choices=["auto", "actors", "tasks"],
        default="auto",
        help="Ray Data's views in an actor pool or in tasks (auto: as training picks for that many rows, "
        "data.views_actor_rows)",
    )
    data.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="pairs of runs (each pipeline first in every other one); the median pair's ratio is reported",
    )
    data.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    data.add_argument("--json", action="store_true", help="print the result as JSON (stable keys)")
    data.set_defaults(func=cmd_bench_data)
