"""Which eval keys the periodic probe (jobs/train/probe.py) reports, as plain data (no torch), so
that a spec whose early-stopping scheduler reads a key the probe never reports fails before launch.

The periodic probe runs the probes that are cheap on a few images with the student in-process:
retrieval (on the probe splits and on caption datasets such as Flickr30k) and the linear dense
probes (segmentation, depth, normals) on any dataset whose labels allow them, trained on the first
`train.probe_images` probe-train images and scored on as many probe-test images. It reports under
the final evaluation's keys; its numbers are noisier than the final evaluation's.
"""

from tipslab.jobs.config import experiment
from tipslab.jobs.eval import registry
from tipslab.models.errors import ConfigError

PERIODIC_PROBES = ("retrieval", "segmentation", "depth", "normals")
DEFAULT_METRICS = ("i2t_r1", "t2i_r1")  # train.probe_metrics empty: retrieval on the probe splits


def producible(exp) -> dict[str, tuple[str, str | None, str]]:
    """{eval key: (dataset, folder or None for the probe splits, probe)} the periodic probe can report."""
    exp = experiment(exp)
    out = {}
    for name, path, probes in registry.planned(exp.eval):
        for probe in probes:
            if probe in PERIODIC_PROBES:
                out.update({f"eval/{name}/{metric}": (name, path, probe) for metric in registry.METRICS[probe]})
    return out


def periodic_keys(exp) -> list[str]:
    """The eval keys the periodic probe reports every `train.probe_every` steps ([] when it is off)."""
    exp = experiment(exp)
    if not exp.train.probe_every:
        return []
    return list(exp.train.probe_metrics) or [f"eval/{exp.eval.dataset}/{m}" for m in DEFAULT_METRICS]


def check_periodic(exp) -> None:
    """Every key of train.probe_metrics is one the periodic probe can report with this eval config
    (when the probe runs: a spec's smaller sizes switch it off and keep the full size's keys)."""
    exp = experiment(exp)
    if not exp.train.probe_every:
        return
    can = producible(exp)
    for i, key in enumerate(exp.train.probe_metrics):
        if key not in can:
            raise ConfigError(
                f"train.probe_metrics[{i}]: the periodic probe cannot report {key!r} (it runs "
                f"{', '.join(PERIODIC_PROBES)} on eval.dataset and eval.datasets); it can report {sorted(can)}"
            )
