"""Is a difference between two variants real? Welch's t over seeds.

`welch(a, b)` gives the mean difference mean(a) - mean(b) of two samples (one value per seed) and
its two-sided confidence interval from Welch's t: the standard error sqrt(s_a²/n_a + s_b²/n_b),
the Welch–Satterthwaite degrees of freedom, and the t quantile (from scipy, which MLflow
requires). An effect counts as real when that interval excludes zero.

No interval is made up where the samples cannot give one: with one value on either side there is
no variance to estimate, and when neither sample varies at all the degrees of freedom are 0/0.
Then `low`, `high` and `df` are None and `reason` says why. Values that are None or NaN count as
missing and are left out (n counts the values used).
"""

import math
import statistics
from dataclasses import dataclass

ONE_SEED = "n=1"  # one value on a side: no variance, no interval
NO_SPREAD = "no spread"  # every value equal on both sides: the degrees of freedom are undefined
NO_VALUES = "no values"


@dataclass(frozen=True)
class Diff:
    delta: float | None  # mean(a) - mean(b); None when a side has no values
    low: float | None  # the confidence interval; None when none can be given (see reason)
    high: float | None
    n_a: int
    n_b: int
    df: float | None = None  # Welch–Satterthwaite degrees of freedom
    se: float | None = None  # standard error of the difference
    level: float = 0.95
    reason: str | None = None  # why there is no interval: ONE_SEED, NO_SPREAD or NO_VALUES

    @property
    def real(self) -> bool:
        """The interval excludes zero."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def better(self, goal: str) -> bool | None:
        """Whether a real difference goes the metric's way (max: up, min: down); None when not real."""
        if not self.real:
            return None
        return (self.delta > 0) == (goal == "max")


def _clean(values) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def t_quantile(p: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(p, df))


def welch(a, b, level: float = 0.95) -> Diff:
    """mean(a) - mean(b) with its two-sided `level` confidence interval from Welch's t."""
    a, b = _clean(a), _clean(b)
    n_a, n_b = len(a), len(b)
    if not a or not b:
        return Diff(None, None, None, n_a, n_b, level=level, reason=NO_VALUES)
    delta = statistics.fmean(a) - statistics.fmean(b)
    if n_a < 2 or n_b < 2:
        return Diff(delta, None, None, n_a, n_b, level=level, reason=ONE_SEED)
    va, vb = statistics.variance(a) / n_a, statistics.variance(b) / n_b
    if va == 0 and vb == 0:
        return Diff(delta, None, None, n_a, n_b, se=0.0, level=level, reason=NO_SPREAD)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    return Diff(delta, delta - half, delta + half, n_a, n_b, df, se, level)
