"""Values inside the embedded PromQL evaluator: every node is evaluated over the whole step grid.

A query is evaluated at ``steps`` times at once (one for an instant query). Each expression node
returns one of:

- :class:`Scalar`: one float per step.
- :class:`String`: a string literal.
- :class:`Vector`: an instant vector over all steps: ``labels[i]`` is series ``i``'s label set,
  ``values[i, k]`` its value at step ``k`` and ``present[i, k]`` whether it has one (a value may be
  NaN, so absence is a separate mask; what ``values`` holds where ``present`` is False is
  unspecified, NaN or 0, and every reader masks it). Row order is the order Prometheus' engine
  would produce the samples in; ``ordered`` marks vectors whose order is part of the result
  (``sort``, ``topk`` …).
- :class:`Matrix`: a range vector: the samples of each series (flat arrays, stale markers
  removed) and, for each step, the window ``[range_end - range_ms, range_end]`` (inclusive, as in
  Prometheus 2.x) given as flat index ranges ``lo[i, k]:hi[i, k]``.

Label sets are :data:`Labels`: tuples of ``(name, value)`` pairs sorted by name, without empty
values (Prometheus' "a label with an empty value does not exist").
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fleetscope.query import QueryError
from fleetscope.store import STALE_NAN_BITS

Labels = tuple[tuple[str, str], ...]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

NAME = "__name__"
DUPLICATE_LABELSET = "vector cannot contain metrics with the same labelset"


# ----------------------------------------------------------------------------- label sets


def make_labels(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> Labels:
    """A label set from a mapping or pairs; empty values are dropped."""
    if isinstance(pairs, Mapping):
        if "" not in pairs.values():  # the usual case, without a Python loop per pair
            return tuple(sorted(pairs.items()))
        pairs = pairs.items()
    return tuple(sorted((k, v) for k, v in pairs if v != ""))


def label_value(labels: Labels, name: str) -> str:
    """The value of ``name`` (``""`` when the label is missing): a binary search, label sets
    being sorted by name."""
    i = bisect_left(labels, (name,))
    return labels[i][1] if i < len(labels) and labels[i][0] == name else ""


def drop_name(labels: Labels) -> Labels:
    if labels and labels[0][0] == NAME:  # sorted: a label set holds it once, usually first
        return labels[1:]
    return tuple(p for p in labels if p[0] != NAME)


def set_label(labels: Labels, name: str, value: str) -> Labels:
    """``labels`` with ``name`` set to ``value`` (removed when ``value`` is empty)."""
    rest = [p for p in labels if p[0] != name]
    if value != "":
        rest.append((name, value))
    return tuple(sorted(rest))


def keep_labels(labels: Labels, names: frozenset[str]) -> Labels:
    return tuple(p for p in labels if p[0] in names)


def drop_labels(labels: Labels, names: frozenset[str]) -> Labels:
    return tuple(p for p in labels if p[0] not in names)


def format_labels(labels: Labels) -> str:
    """Prometheus' ``labels.Labels.String()``: ``{a="1", b="2"}``."""
    return "{" + ", ".join(f"{k}={go_quote(v)}" for k, v in labels) + "}"


def go_quote(text: str) -> str:
    """Go's ``strconv.Quote`` for the characters label values usually hold."""
    out = ['"']
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def label_dict(labels: Labels) -> dict[str, str]:
    return dict(labels)


# ----------------------------------------------------------------------------- values


@dataclass
class Scalar:
    values: F64  # [steps]


@dataclass
class String:
    text: str


@dataclass
class Vector:
    labels: list[Labels]
    values: F64  # [series, steps]
    present: Bools  # [series, steps]
    ordered: bool = False
    known_cells: tuple[I64, I64] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def empty(cls, steps: int) -> Vector:
        return cls([], np.empty((0, steps), np.float64), np.empty((0, steps), np.bool_))

    @property
    def steps(self) -> int:
        return int(self.values.shape[1])

    def cells(self) -> tuple[I64, I64]:
        """The present ``(row, step)`` pairs in row-major order, as ``np.nonzero(present)``.

        Remembered, and given by the producer where it knows them (a selector): a join over a
        week of short-lived series is a large, sparse ``present`` that several readers would
        otherwise scan again. ``present`` is never changed once a vector is built.
        """
        if self.known_cells is None:
            rows, steps = np.nonzero(self.present)
            self.known_cells = (rows.astype(np.int64), steps.astype(np.int64))
        return self.known_cells

    def take(self, rows: Sequence[int] | I64) -> Vector:
        idx = np.asarray(rows, np.int64)
        return Vector([self.labels[int(i)] for i in idx], self.values[idx], self.present[idx])


@dataclass
class Matrix:
    labels: list[Labels]
    t: I64  # flat sample times (ms), each series' run sorted
    v: F64  # flat sample values, no stale markers
    bounds: I64  # [series + 1] series i's samples are t[bounds[i]:bounds[i + 1]]
    lo: I64  # [series, steps] first flat index in the step's window
    hi: I64  # [series, steps] one past the last
    range_end: I64  # [steps] the windows' inclusive end times (ms)
    range_ms: int
    absent_labels: Labels = ()

    @property
    def counts(self) -> I64:
        return self.hi - self.lo


Value = Scalar | String | Vector | Matrix


def stale_mask(v: F64) -> Bools:
    """True where a value is Prometheus' staleness marker (not any NaN)."""
    return np.asarray(v.view(np.int64) == STALE_NAN_BITS)


def merge_same_labels(vec: Vector, *, whole: bool = False) -> Vector:
    """Rows with equal label sets become one row, as Prometheus' range evaluation merges them.

    Two such rows present at the same step are Prometheus' "vector cannot contain metrics with
    the same labelset" error; with ``whole`` any two rows with equal label sets are (the check
    Prometheus makes on whole matrices: range-vector functions and unary minus). Rows are moved
    by their present (row, step) pairs only: a join over a week of short-lived series is many
    rows × steps and few pairs.
    """
    first: dict[Labels, int] = {}
    gid = np.fromiter(
        (first.setdefault(lab, len(first)) for lab in vec.labels), np.int64, len(vec.labels)
    )
    if len(first) == len(vec.labels):
        return vec
    if whole:
        raise QueryError("execution", DUPLICATE_LABELSET)
    rows, step = vec.cells()
    return from_cells(list(first), gid[rows], step, vec.values[rows, step], vec.steps,
                      ordered=vec.ordered)  # fmt: skip


def from_cells(
    labels: list[Labels],
    row: I64,
    step: I64,
    values: F64,
    steps: int,
    *,
    ordered: bool = False,
    unique: bool = False,
) -> Vector:
    """The vector whose row ``row[j]`` (label set ``labels[row[j]]``) holds ``values[j]`` at
    step ``step[j]``: built from its present cells only, as merges and joins of many
    short-lived series have them. Two values for one row and step are Prometheus' "vector
    cannot contain metrics with the same labelset" error (not looked for with ``unique``: the
    caller knows each cell comes once)."""
    flat = row * steps + step
    if not unique and (np.bincount(flat, minlength=len(labels) * steps) > 1).any():
        raise QueryError("execution", DUPLICATE_LABELSET)
    out = np.full(len(labels) * steps, np.nan)
    present = np.zeros(len(labels) * steps, np.bool_)
    out[flat] = values
    present[flat] = True
    shape = (len(labels), steps)
    return Vector(labels, out.reshape(shape), present.reshape(shape), ordered)


def broadcast_steps(vec: Vector, steps: int) -> Vector:
    """A one-step vector repeated over ``steps`` steps (step-invariant expressions)."""
    if vec.steps == steps:
        return vec
    return Vector(
        vec.labels,
        np.repeat(vec.values, steps, axis=1),
        np.repeat(vec.present, steps, axis=1),
        vec.ordered,
    )
