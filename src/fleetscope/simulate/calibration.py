"""Simulator calibration: a published trace summary, and the distributions fitted to it.

DESIGN.md "Simulator calibration" gives one row per trace (median/mean GPUs per job, run time and
queue time, failed and cancelled fractions); the default file ``calibration.toml`` holds the
Helios (2020) row. :func:`load` reads that file or any file of the same shape
(``fleetscope simulate --calibration PATH``). Keys:

- ``[gpus] median, mean, max``: GPUs per job. Fitted as a power law over powers of two,
  ``P(2^i) ∝ q^i`` for ``1 ≤ 2^i ≤ max``, with ``q`` solved so the mean matches (heavy-tailed:
  each doubling is ``q`` times as likely). Its single-GPU share must be ≥ ½ for the median to be 1
  (the only median the published traces have). :meth:`Calibration.gpus` then caps the sizes to
  the fleet: it keeps the single-GPU share and re-solves the tail's ratio over ``2 … cap`` so the
  capped distribution keeps the published mean (a plain clip would lose it).
- ``[run_seconds] median, mean, max``: log-normal with ``μ = ln(median)`` and
  ``σ = sqrt(2 ln(mean/median))`` when no ``max`` is given; with ``max`` the runs are clipped
  there (a Slurm ``MaxTime``) and ``σ`` is solved so the *clipped* mean still matches.
- ``[queue_seconds] median, mean``: targets only. Queue time (start − submit, DESIGN.md
  "Records") is the scheduler's outcome and is reported against these, never sampled.
- ``[outcomes] failed, cancelled``: fractions of all jobs. ``failed`` counts every job that
  ended in error: ``timeout_share`` of them end ``TIMEOUT``, ``out_of_memory_share``
  ``OUT_OF_MEMORY`` and the rest ``FAILED``. A cancelled job is cancelled while pending when it is
  still queued after its patience (log-normal, median ``cancel_patience_median_s``, σ = 1.5),
  otherwise while running, at the end of its sampled run time.
- ``[load] target_allocation``: the arrival rate is set so that, in a typical two-week window,
  this share of the fleet's GPUs is allocated (see :meth:`Calibration.arrival_rate_per_s`).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fleetscope.model import JobState

__all__ = ["Calibration", "CalibrationError", "GpuSizes", "LogNormal", "load"]

CANCEL_PATIENCE_SIGMA = 1.5


class CalibrationError(ValueError):
    """A calibration file is unreadable, incomplete, or cannot be fitted; the message says why."""


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _bisect(f: Any, lo: float, hi: float, target: float, iters: int = 200) -> float:
    """``x`` in ``[lo, hi]`` with ``f(x) == target`` for an increasing ``f``."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class LogNormal:
    """``min(exp(N(mu, sigma²)), cap)`` (``cap=None``: not clipped)."""

    mu: float
    sigma: float
    cap: float | None = None

    @property
    def median(self) -> float:
        return math.exp(self.mu)

    @property
    def mean(self) -> float:
        """Mean of the (clipped) distribution."""
        full = math.exp(self.mu + self.sigma**2 / 2)
        if self.cap is None:
            return full
        if self.sigma == 0:
            return min(self.median, self.cap)
        z = (math.log(self.cap) - self.mu) / self.sigma
        return full * _phi(z - self.sigma) + self.cap * (1 - _phi(z))

    def sample(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.float64]:
        x = rng.lognormal(self.mu, self.sigma, n)
        return x if self.cap is None else np.minimum(x, self.cap)

    @classmethod
    def fit(cls, median: float, mean: float, cap: float | None = None) -> LogNormal:
        """The log-normal (clipped at ``cap``) with this median and mean."""
        if not 0 < median <= mean:
            raise CalibrationError(f"need 0 < median ≤ mean, got median={median} mean={mean}")
        mu = math.log(median)
        if cap is None:
            return cls(mu, math.sqrt(2 * math.log(mean / median)))
        if not median < cap or mean >= cap / 2:
            raise CalibrationError(f"cap {cap} too small for median {median} and mean {mean}")
        sigma = _bisect(lambda s: cls(mu, s, cap).mean, 1e-9, 30.0, mean)
        return cls(mu, sigma, cap)


@dataclass(frozen=True)
class GpuSizes:
    """A discrete distribution of GPUs per job over powers of two."""

    sizes: tuple[int, ...]
    probs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.dot(self.sizes, self.probs))

    @property
    def median(self) -> int:
        cum = np.cumsum(self.probs)
        return self.sizes[int(np.searchsorted(cum, 0.5))]

    def sample(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.int64]:
        return np.asarray(self.sizes, np.int64)[rng.choice(len(self.sizes), n, p=self.probs)]

    @staticmethod
    def _geometric(sizes: list[int], q: float) -> list[float]:
        w = [q**i for i in range(len(sizes))]
        total = sum(w)
        return [x / total for x in w]

    @classmethod
    def power_law(cls, mean: float, max_size: int) -> GpuSizes:
        """``P(2^i) ∝ q^i`` over ``1 … max_size`` with the given mean."""
        sizes = [2**i for i in range(int(math.log2(max_size)) + 1)]
        if not 1 <= mean < max_size:
            raise CalibrationError(f"mean GPUs {mean} must lie in [1, {max_size})")

        def mean_of(q: float) -> float:
            return float(np.dot(sizes, cls._geometric(sizes, q)))

        q = _bisect(mean_of, 1e-9, 50.0, mean)
        return cls(tuple(sizes), tuple(cls._geometric(sizes, q)))

    def capped(self, cap: int, mean: float) -> GpuSizes:
        """The same single-GPU share, the tail over ``2 … cap`` re-fitted to keep ``mean``.

        When the mean cannot be reached within the cap, the tail is as heavy as allowed (every
        multi-GPU job at ``cap``) and the mean falls short.
        """
        top = 2 ** int(math.log2(max(1, cap)))
        if top >= self.sizes[-1]:
            return self
        if top == 1:
            return GpuSizes((1,), (1.0,))
        p1 = self.probs[0]
        tail = [2**i for i in range(1, int(math.log2(top)) + 1)]

        def mean_of(q: float) -> float:
            return p1 + (1 - p1) * float(np.dot(tail, self._geometric(tail, q)))

        q = _bisect(mean_of, 1e-9, 1e6, mean)
        probs = [p1] + [(1 - p1) * p for p in self._geometric(tail, q)]
        return GpuSizes((1, *tail), tuple(probs))


@dataclass(frozen=True)
class Calibration:
    """One trace summary (see the module docstring for what each field means)."""

    name: str
    source: str
    gpus_median: float
    gpus_mean: float
    gpus_max: int
    run_median_s: float
    run_mean_s: float
    run_max_s: float | None
    queue_median_s: float
    queue_mean_s: float
    failed: float
    cancelled: float
    timeout_share: float
    out_of_memory_share: float
    cancel_patience_median_s: float
    target_allocation: float

    def run_seconds(self) -> LogNormal:
        return LogNormal.fit(self.run_median_s, self.run_mean_s, self.run_max_s)

    def cancel_patience(self) -> LogNormal:
        return LogNormal(math.log(self.cancel_patience_median_s), CANCEL_PATIENCE_SIGMA)

    def gpus(self, cap: int | None = None) -> GpuSizes:
        """GPUs per job, capped to ``cap`` GPUs (the fleet's limit) when given."""
        if self.gpus_median != 1:
            raise CalibrationError(f"only a median of 1 GPU per job is supported, got {self}")
        law = GpuSizes.power_law(self.gpus_mean, self.gpus_max)
        if law.probs[0] < 0.5:
            raise CalibrationError(
                f"a power law with mean {self.gpus_mean} has median > 1; lower gpus.max"
            )
        return law if cap is None else law.capped(cap, self.gpus_mean)

    def outcomes(self) -> tuple[tuple[JobState, ...], tuple[float, ...]]:
        """Final states of jobs and their probabilities."""
        f = self.failed
        states = (
            JobState.COMPLETED,
            JobState.FAILED,
            JobState.TIMEOUT,
            JobState.OUT_OF_MEMORY,
            JobState.CANCELLED,
        )
        probs = (
            1 - f - self.cancelled,
            f * (1 - self.timeout_share - self.out_of_memory_share),
            f * self.timeout_share,
            f * self.out_of_memory_share,
            self.cancelled,
        )
        return states, probs

    def typical_gpu_seconds(self, cap: int, jobs: int = 2_000, windows: int = 400) -> float:
        """GPU-seconds per job in a typical window of ``jobs`` jobs.

        With heavy tails the sample mean of ``GPUs × run`` over a few thousand jobs is usually
        below the expectation (a few huge jobs carry it), so the median over Monte-Carlo windows
        (fixed seed: deterministic) is what a two-week run typically sees.
        """
        rng = np.random.default_rng(0x5EED)
        sizes = self.gpus(cap).sample(rng, jobs * windows).reshape(windows, jobs)
        runs = self.run_seconds().sample(rng, jobs * windows).reshape(windows, jobs)
        return float(np.median((sizes * runs).mean(axis=1)))

    def arrival_rate_per_s(self, gpus: int, busy_gpus: float, cap: int) -> float:
        """Jobs per second so that ``target_allocation`` of the fleet is allocated, typically.

        ``busy_gpus`` are held by work outside the calibrated stream (inference endpoints).
        Each job holds :meth:`typical_gpu_seconds` GPU-seconds (sizes and runs independent).
        """
        want = self.target_allocation * gpus - busy_gpus
        if want <= 0:
            return 0.0
        return want / self.typical_gpu_seconds(cap)


def _section(doc: dict[str, Any], name: str) -> dict[str, Any]:
    sec = doc.get(name)
    if not isinstance(sec, dict):
        raise CalibrationError(f"calibration needs a [{name}] table")
    return sec


def _num(sec: dict[str, Any], table: str, key: str, default: float | None = None) -> float:
    value = sec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalibrationError(f"{table}.{key} must be a number, got {value!r}")
    return float(value)


def parse(doc: dict[str, Any]) -> Calibration:
    """A :class:`Calibration` from a parsed TOML document; raises :class:`CalibrationError`."""
    gpus, run = _section(doc, "gpus"), _section(doc, "run_seconds")
    queue, out = _section(doc, "queue_seconds"), _section(doc, "outcomes")
    load_ = doc.get("load", {})
    run_max = run.get("max")
    cal = Calibration(
        name=str(doc.get("name", "unnamed")),
        source=str(doc.get("source", "")),
        gpus_median=_num(gpus, "gpus", "median"),
        gpus_mean=_num(gpus, "gpus", "mean"),
        gpus_max=int(_num(gpus, "gpus", "max", 1024)),
        run_median_s=_num(run, "run_seconds", "median"),
        run_mean_s=_num(run, "run_seconds", "mean"),
        run_max_s=None if run_max is None else _num(run, "run_seconds", "max"),
        queue_median_s=_num(queue, "queue_seconds", "median"),
        queue_mean_s=_num(queue, "queue_seconds", "mean"),
        failed=_num(out, "outcomes", "failed"),
        cancelled=_num(out, "outcomes", "cancelled"),
        timeout_share=_num(out, "outcomes", "timeout_share", 0.1),
        out_of_memory_share=_num(out, "outcomes", "out_of_memory_share", 0.1),
        cancel_patience_median_s=_num(out, "outcomes", "cancel_patience_median_s", 900),
        target_allocation=_num(load_, "load", "target_allocation", 0.7),
    )
    if min(cal.failed, cal.cancelled) < 0 or cal.failed + cal.cancelled > 1:
        raise CalibrationError("outcomes.failed and outcomes.cancelled must be fractions ≤ 1")
    if not 0 <= cal.timeout_share + cal.out_of_memory_share <= 1:
        raise CalibrationError("timeout_share + out_of_memory_share must be within [0, 1]")
    if not 0 < cal.target_allocation <= 1:
        raise CalibrationError("load.target_allocation must be within (0, 1]")
    if cal.gpus_max < 1 or cal.gpus_max & (cal.gpus_max - 1):
        raise CalibrationError(f"gpus.max must be a power of two, got {cal.gpus_max}")
    cal.gpus()  # fail early when the size distribution cannot be fitted
    cal.run_seconds()
    return cal


def load(path: Path | str | None = None) -> Calibration:
    """The calibration in ``path``, or the packaged Helios default when ``path`` is ``None``."""
    try:
        if path is None:
            text = resources.files("fleetscope.simulate").joinpath("calibration.toml").read_text()
        else:
            text = Path(path).read_text()
        doc = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CalibrationError(f"cannot read calibration {path or 'default'}: {exc}") from exc
    return parse(doc)
