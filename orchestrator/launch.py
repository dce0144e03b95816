"""What a run needs before it starts, and may still lack while it is only planned: the tokenizer.

`tipslab plan` and `tipslab config` work before the data is prepared; `tipslab sweep` and
`tipslab train` check every trial here first, before torch or Ray are imported, so a run that would
train something other than the paper's recipe stops with one line (exit 2) instead of hours later.

The hash tokenizer (no training, no file) is for the CPU sizes only. At any TIPS size the text tower
reads the paper's SentencePiece vocabulary (32,000 pieces, the TIPS paper): a tokenizer.model
trained on the training shards' captions (`tipslab data tokenizer`) or the official one.
"""

from pathlib import Path

from .errors import ConfigError

# Our CPU sizes (models/config.py SIZES): the only ones that may train with the hash tokenizer.
CPU_SIZES = ("tiny", "small-cpu")


def make_tokenizer_command(config: dict) -> str:
    """The command that makes the tokenizer a config names (or, for 'hash', the usual place for one)."""
    data = config["data"]
    root = data["root"].rstrip("/")
    tokenizer = config["model"]["tokenizer"]
    out = tokenizer if tokenizer != "hash" else f"{root}/tokenizer.model"
    return f"`tipslab data tokenizer {root}/{data['train_split']} {out}`"


def check_tokenizer(config: dict, where: str) -> None:
    """A resolved trial config's tokenizer fits its size and can be read; raises one-line ConfigErrors."""
    model = config["model"]
    tokenizer, size = model["tokenizer"], model["size"]
    if tokenizer == "hash":
        if size not in CPU_SIZES:
            raise ConfigError(
                f"{where}: model.tokenizer: 'hash' is for the CPU sizes ({', '.join(CPU_SIZES)}), not model.size "
                f"{size}, which trains with the paper's 32k SentencePiece vocabulary: make one with "
                f"{make_tokenizer_command(config)} and set model.tokenizer to it (or to the official tokenizer.model)"
            )
        return
    if "://" in tokenizer:
        raise ConfigError(
            f"{where}: model.tokenizer: {tokenizer} is a URI; the tokenizer.model is read from a file path that "
            "the driver and every worker see (a shared folder)"
        )
    if not Path(tokenizer).is_file():
        raise ConfigError(
            f"{where}: model.tokenizer: no SentencePiece model at {tokenizer}: make it once from the training "
            f"shards' captions with {make_tokenizer_command(config)} (or copy the official tokenizer.model there)"
        )
    from tipslab.models.tokenizer import build_tokenizer  # sentencepiece only: no torch

    try:
        build_tokenizer(model)  # a file that is no SentencePiece model, or more pieces than model.vocab_size
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def check_launch(plan) -> None:
    """Every trial of a plan (orchestrator/spec.py Plan) can start; called before Ray is imported."""
    where = f"{plan.path}{f' ({plan.size})' if plan.size not in ('full', 'single') else ''}"
    for trial in plan.trials:
        check_tokenizer(trial.config, f"{where}: variant {trial.variant!r}")
