"""Numbers that separate or say they cannot: a mean with its 95 % interval, a method's paired
difference against the random encoder of its architecture, and the smallest difference the design
could detect.

Pure functions on plain floats (``tests/test_benchmark.py`` checks them against ``scipy.stats``).

Why a t-interval and not ``mean +- 1.96 SE``: the benchmark has a handful of values per row (5 folds,
maybe x 3 probe seeds), and the spread itself is estimated from them. With n = 5 the normal interval
assumes a known spread and is about 30 % too narrow (t quantile 2.78 at 4 degrees of freedom against
1.96), so it would call differences real that the data cannot carry. Student's t accounts for the
estimated spread and tends to the normal interval as n grows.

Pairing: folds differ far more than methods do (a hard fold is hard for every encoder), so a method is
compared with its random twin on the same fold and the interval is taken over the differences; the
fold-to-fold spread then cancels. The fold is the unit (:mod:`ultrassl.benchmark.record` averages a
fold's seeds first): seeds of one fold share its test patients and are not independent values. Folds
of one cross-validation share training patients too, so even these intervals lean narrow; the JSON
states the design beside them.

Many rows: a task's table holds a lift per method and protocol, and with 95 % intervals one in twenty true zeros
still comes out "resolved". Each interval is right for its own row read alone; to read the table as a
whole, :func:`holm` adjusts the paired tests' p-values over the task's lifts (Holm's step-down
correction: the family-wise error stays at the tests' level under any dependence between the rows, which share
folds and twins here, and it rejects at least as much as Bonferroni).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from scipy import integrate, optimize
from scipy import stats as st

__all__ = [
    "Interval",
    "PairedDifference",
    "detectable_difference",
    "holm",
    "mean_interval",
    "paired_difference",
]


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided interval; ``low``/``high`` are None when n < 2 (no spread to go on)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    sd: float | None
    confidence: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or below zero (the difference is resolved)."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The mean of ``values`` with Student's t interval (n - 1 degrees of freedom, sample sd)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Interval(None, None, None, 0, None, confidence)
    mean = math.fsum(xs) / n
    if n == 1:
        return Interval(mean, None, None, 1, None, confidence)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd, confidence)


@functools.lru_cache(maxsize=65536)  # a summary asks again for every unchanged row (a root of integrals)
def detectable_difference(sd: float | None, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest true mean difference a two-sided paired t-test at ``alpha`` finds with probability
    ``power``, given ``n`` pairs whose differences spread with standard deviation ``sd``.

    Solves power(delta) = P(|T| > t_crit) for T non-central t with n - 1 degrees of freedom and
    non-centrality delta * sqrt(n) / sd. None when it cannot be said (n < 2 or no sd)."""
    if sd is None or n < 2 or not math.isfinite(sd):
        return None
    if sd == 0:
        return 0.0
    df = n - 1
    crit = float(st.t.ppf(1 - alpha / 2, df))

    def shortfall(dz: float) -> float:  # in units of sd (the effect size), so any scale of sd works
        return _power(dz * math.sqrt(n), df, crit) - power

    high = 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=1e-12)) * sd


def _power(nc: float, df: int, crit: float) -> float:
    """P(|T| > crit) for T non-central t(df, nc); scipy's ``nct`` gives NaN far in the tail at df = 1,
    where the same probability is integrated over the chi-square of the spread instead."""
    p = float(st.nct.sf(crit, df, nc) + st.nct.cdf(-crit, df, nc))
    if math.isfinite(p):
        return p

    def given(v: float) -> float:
        c = crit * math.sqrt(v / df)
        return float((st.norm.sf(c - nc) + st.norm.cdf(-c - nc)) * st.chi2.pdf(v, df))

    return float(integrate.quad(given, 0, math.inf, limit=200)[0])


@dataclass(frozen=True)
class PairedDifference:
    """A method minus its baseline over matched pairs: the mean difference with its interval, and the
    smallest difference this many pairs with this spread could detect (alpha 0.05, power 0.8)."""

    difference: Interval
    detectable: float | None
    #: the matched keys, in order
    pairs: tuple[Hashable, ...]
    #: two-sided p-value of the paired t-test (below 1 - confidence exactly when the interval excludes
    #: zero); None with fewer than two pairs
    p: float | None = None


def paired_difference(
    values: Mapping[Hashable, float],
    baseline: Mapping[Hashable, float],
    confidence: float = 0.95,
) -> PairedDifference:
    """``values[k] - baseline[k]`` (an encoder against its baseline) over the keys both have (e.g. ``(fold, seed)``), as
    :class:`PairedDifference`; keys only one side has are left out (never compared unpaired)."""
    keys = tuple(sorted((k for k in values if k in baseline), key=repr))
    diffs = [float(values[k]) - float(baseline[k]) for k in keys]
    iv = mean_interval(diffs, confidence)
    return PairedDifference(iv, detectable_difference(iv.sd, iv.n), keys, _t_test_p(iv))


def _t_test_p(iv: Interval) -> float | None:
    """Two-sided p-value of the one-sample t-test of ``iv``'s mean against zero."""
    if iv.n < 2 or iv.sd is None or iv.mean is None:
        return None
    if iv.sd == 0:
        return 1.0 if iv.mean == 0 else 0.0
    t = iv.mean / (iv.sd / math.sqrt(iv.n))
    return float(2 * st.t.sf(abs(t), iv.n - 1))


def holm(p_values: Mapping[Hashable, float | None]) -> dict[Hashable, float | None]:
    """Holm's step-down adjusted p-values of a family of tests (None stays None and is not counted).

    The i-th smallest of m p-values is multiplied by m - i + 1, the running maximum keeps the order, and
    1 caps it: a test is rejected at level alpha when its adjusted value is below alpha."""
    known = sorted(((float(v), k) for k, v in p_values.items() if v is not None), key=lambda t: t[0])
    m = len(known)
    out: dict[Hashable, float | None] = {k: None for k, v in p_values.items() if v is None}
    running = 0.0
    for i, (p, k) in enumerate(known):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out
