"""`tipslab train`: one training run, then its evaluation."""

from .sweep_commands import finish


def cmd_train(args) -> None:
    from .single import run_single

    finish(run_single(args.config, args.overrides, address=args.address, resume=args.resume))


def add_parsers(sub) -> None:
    train = sub.add_parser("train", help="one training run, then its evaluation")
    train.add_argument("config", help="an experiment YAML, e.g. ablations/base/tips_tiny.yaml")
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stopped run from its latest checkpoint: RUN is the Ray Train run name, "
        "its folder under $TIPSLAB_HOME/ray (the end of the MLflow run's checkpoint_uri tag)",
    )
    train.set_defaults(func=cmd_train)
