"""PromQL binary operators over every step at once.

- scalar ∘ scalar, vector ∘ scalar: element-wise on ``[series, steps]`` arrays;
- vector ∘ vector: both sides' series are hashed by their matching signature (``on``/``ignoring``
  labels); the "one" side gives, per signature and step, the row to pair with, and every
  (many-side row, one-side row) pair that occurs becomes an output series;
- ``and``/``or``/``unless``: per signature and step, whether the other side has a sample.

Semantics and error messages follow Prometheus 2.42 (``VectorBinop``, ``VectorAnd`` …):
arithmetic (but ``atan2``) drops the metric name, a filtering comparison keeps the left value
and the name, ``bool`` turns comparisons into 0/1 and drops the name, ``group_left`` and
``group_right`` copy the listed labels from the "one" side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fleetscope.query import QueryError
from fleetscope.query.value import (
    F64,
    I64,
    NAME,
    Bools,
    Labels,
    Scalar,
    Value,
    Vector,
    drop_labels,
    drop_name,
    format_labels,
    from_cells,
    keep_labels,
    label_value,
    merge_same_labels,
    set_label,
)

ARITHMETIC = frozenset({"+", "-", "*", "/", "%", "^", "atan2"})
NAME_DROPPING = frozenset({"+", "-", "*", "/", "%", "^"})  # Prometheus 2.42 keeps it for atan2
COMPARISON = frozenset({"==", "!=", ">", "<", ">=", "<="})
SET_OPERATORS = frozenset({"and", "or", "unless"})

ONE_TO_ONE = "one-to-one"
MANY_TO_ONE = "many-to-one"
ONE_TO_MANY = "one-to-many"
MANY_TO_MANY = "many-to-many"


@dataclass(frozen=True)
class Matching:
    """Vector matching of a binary expression (Prometheus' ``VectorMatching`` + ``bool``)."""

    card: str = ONE_TO_ONE
    on: bool = False
    names: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    return_bool: bool = False


def binary(op: str, lhs: Value, rhs: Value, matching: Matching) -> Value:
    """Evaluate ``lhs op rhs`` (values from the engine; the parser has checked the types)."""
    if isinstance(lhs, Scalar) and isinstance(rhs, Scalar):
        values, keep = apply(op, lhs.values, rhs.values)
        if keep is not None:
            values = keep.astype(np.float64)
        return Scalar(values)
    if isinstance(lhs, Vector) and isinstance(rhs, Scalar):
        return _vector_scalar(op, lhs, rhs.values, swap=False, return_bool=matching.return_bool)
    if isinstance(lhs, Scalar) and isinstance(rhs, Vector):
        return _vector_scalar(op, rhs, lhs.values, swap=True, return_bool=matching.return_bool)
    assert isinstance(lhs, Vector) and isinstance(rhs, Vector)
    if op in SET_OPERATORS:
        return _set_operation(op, lhs, rhs, matching)
    return _vector_vector(op, lhs, rhs, matching)


def apply(op: str, a: F64, b: F64) -> tuple[F64, Bools | None]:
    """``a op b`` element-wise: (value, None) for arithmetic, (a, kept) for comparisons."""
    with np.errstate(all="ignore"):
        if op == "+":
            return a + b, None
        if op == "-":
            return a - b, None
        if op == "*":
            return a * b, None
        if op == "/":
            return a / b, None
        if op == "%":
            return np.fmod(a, b), None
        if op == "^":
            return np.power(a, b), None
        if op == "atan2":
            return np.arctan2(a, b), None
        if op == "==":
            keep = a == b
        elif op == "!=":
            keep = a != b
        elif op == ">":
            keep = a > b
        elif op == "<":
            keep = a < b
        elif op == ">=":
            keep = a >= b
        elif op == "<=":
            keep = a <= b
        else:
            raise QueryError("bad_data", f"operator {op!r} is not supported")
    return np.broadcast_to(a, np.broadcast(a, b).shape).astype(np.float64), np.asarray(keep)


def _vector_scalar(op: str, vec: Vector, scalar: F64, *, swap: bool, return_bool: bool) -> Vector:
    a, b = vec.values, scalar[None, :]
    values, keep = apply(op, b, a) if swap else apply(op, a, b)
    present = vec.present
    if keep is not None:
        values = vec.values  # a filter keeps the vector's value, whichever side it is on
        if return_bool:
            values = keep.astype(np.float64)
        else:
            present = present & keep
    drop = op in NAME_DROPPING or return_bool
    labels = [drop_name(lab) for lab in vec.labels] if drop else vec.labels
    return merge_same_labels(Vector(labels, np.asarray(values, np.float64), present))


def _signature(matching: Matching) -> Callable[[Labels], Labels | tuple[str, ...]]:
    if matching.on:
        names = sorted(set(matching.names))
        if len(names) == 1:  # on(gpu_uuid): the usual join
            name = names[0]
            return lambda lab: (label_value(lab, name),)
        return lambda lab: tuple(label_value(lab, n) for n in names)
    dropped = frozenset(matching.names) | {NAME}
    return lambda lab: drop_labels(lab, dropped)


def _match_labels(lab: Labels, matching: Matching) -> Labels:
    if matching.on:
        return keep_labels(lab, frozenset(matching.names))
    return drop_labels(lab, frozenset(matching.names) | {NAME})


def _set_operation(op: str, lhs: Vector, rhs: Vector, matching: Matching) -> Vector:
    sig = _signature(matching)
    ids: dict[Labels | tuple[str, ...], int] = {}
    lid = np.array([ids.setdefault(sig(lab), len(ids)) for lab in lhs.labels], np.int64)
    rid = np.array([ids.setdefault(sig(lab), len(ids)) for lab in rhs.labels], np.int64)
    if op == "or":
        left_has = _any_by_signature(lid, lhs, len(ids))
        rhs_present = rhs.present & ~left_has[rid] if len(rid) else rhs.present
        out = Vector(
            lhs.labels + rhs.labels,
            np.concatenate([lhs.values, rhs.values]),
            np.concatenate([lhs.present, rhs_present]),
        )
        return merge_same_labels(out)
    right_has = _any_by_signature(rid, rhs, len(ids))
    other = right_has[lid] if len(lid) else lhs.present
    present = lhs.present & (other if op == "and" else ~other)
    return Vector(lhs.labels, lhs.values, present)


def _any_by_signature(sid: I64, vec: Vector, signatures: int) -> Bools:
    """Per signature and step, whether a row of ``vec`` with that signature is present."""
    counts = np.bincount(_cells(sid, vec)[1], minlength=signatures * vec.steps)
    return counts.reshape(signatures, vec.steps) > 0


def _cells(sid: I64, vec: Vector) -> tuple[I64, I64]:
    """The present (row, step) pairs as rows and flat ``signature * steps + step`` indices:
    on many short-lived series (allocations over a week of steps) far fewer than rows × steps."""
    rows, step = vec.cells()
    return rows, sid[rows] * vec.steps + step


def _vector_vector(op: str, lhs: Vector, rhs: Vector, matching: Matching) -> Vector:
    steps = lhs.steps
    sig = _signature(matching)
    swapped = matching.card == ONE_TO_MANY
    many, one = (rhs, lhs) if swapped else (lhs, rhs)
    ids: dict[Labels | tuple[str, ...], int] = {}
    one_sid = np.array([ids.setdefault(sig(lab), len(ids)) for lab in one.labels], np.int64)
    one_row = _one_side_rows(one, one_sid, len(ids), matching)
    many_sid = np.array([ids.get(sig(lab), -1) for lab in many.labels], np.int64)
    mrows = np.flatnonzero(many_sid >= 0)
    partner = one_row[many_sid[mrows]] if len(mrows) else np.empty((0, steps), np.int64)
    valid = many.present[mrows] & (partner >= 0)
    r_idx, step = np.nonzero(valid)
    m_row = mrows[r_idx]
    o_row = partner[r_idx, step]
    lv = many.values[m_row, step]
    rv = one.values[o_row, step]
    if swapped:
        lv, rv = rv, lv
    values, keep = apply(op, lv, rv)
    if keep is None:
        kept = np.ones(len(values), np.bool_)
    elif matching.return_bool:
        values, kept = keep.astype(np.float64), np.ones(len(values), np.bool_)
    else:
        kept = keep
    m_row, o_row, step, values = m_row[kept], o_row[kept], step[kept], values[kept]
    pair_key = m_row * max(len(one.labels), 1) + o_row
    pairs, pair_idx = np.unique(pair_key, return_inverse=True)
    pair_idx = pair_idx.ravel()
    labels: list[Labels] = []
    for key in pairs:
        mi, oi = divmod(int(key), max(len(one.labels), 1))
        labels.append(_result_labels(op, many.labels[mi], one.labels[oi], matching))
    pair_many = pairs // max(len(one.labels), 1)
    _check_unique_matches(matching, many_sid[m_row], pair_idx, labels, step, pair_many)
    # Pairs with equal output labels are one series (Prometheus' range evaluation merges them):
    # a GPU's week of allocations to one team is one row, not one per allocation.
    # A pair matches once per step: only merged pairs can meet at one.
    out: dict[Labels, int] = {}
    out_row = np.fromiter((out.setdefault(lab, len(out)) for lab in labels), np.int64, len(labels))
    return from_cells(
        list(out), out_row[pair_idx], step, values, steps, unique=len(out) == len(labels)
    )


def _one_side_rows(one: Vector, sid: I64, signatures: int, matching: Matching) -> I64:
    """Per signature and step, the "one"-side row present there (-1: none).

    Two rows of one signature present at one step are Prometheus' many-to-many error.
    """
    steps = one.steps
    present_rows, flat = _cells(sid, one)
    counts = np.bincount(flat, minlength=signatures * steps).reshape(signatures, steps)
    if (counts > 1).any():
        s = int(np.flatnonzero((counts > 1).any(axis=0))[0])
        seen: dict[int, int] = {}
        for i in range(len(one.labels)):
            if not one.present[i, s]:
                continue
            first = seen.setdefault(int(sid[i]), i)
            if first != i:
                side = "left" if matching.card == ONE_TO_MANY else "right"
                group = format_labels(_match_labels(one.labels[i], matching))
                raise QueryError(
                    "execution",
                    f"found duplicate series for the match group {group} on the {side} "
                    f"hand-side of the operation: [{format_labels(one.labels[i])}, "
                    f"{format_labels(one.labels[first])}];many-to-many matching not allowed: "
                    "matching labels must be unique on one side",
                )
    rows = np.full(signatures * steps, -1, np.int64)
    rows[flat] = present_rows
    return rows.reshape(signatures, steps)


def _check_unique_matches(
    matching: Matching,
    sid: I64,
    pair_idx: I64,
    labels: list[Labels],
    step: I64,
    pair_many: I64,
) -> None:
    """Prometheus' per-step checks that each match signature yields one output series.

    ``sid``, ``pair_idx``, ``step``: per matched sample, its signature, pair and step;
    ``labels``, ``pair_many``: per pair, its output labels and its many-side row. A many-side
    row matches once per step, so only a group (signature, and output labels when grouping)
    reached from two many-side rows can break the rule: without one, no per-step check.
    """
    if len(step) == 0:
        return
    steps = int(step.max()) + 1
    pair_sid = np.zeros(len(labels), np.int64)
    pair_sid[pair_idx] = sid
    if matching.card == ONE_TO_ONE:
        key, group = sid * steps + step, pair_sid
        message = "multiple matches for labels: many-to-one matching must be explicit " \
            "(group_left/group_right)"  # fmt: skip
    else:
        label_ids: dict[Labels, int] = {}
        lid = np.array([label_ids.setdefault(lab, len(label_ids)) for lab in labels], np.int64)
        key = (sid * len(label_ids) + lid[pair_idx]) * steps + step
        group = pair_sid * len(label_ids) + lid
        message = "multiple matches for labels: grouping labels must ensure unique matches"
    rows = int(pair_many.max()) + 1 if len(pair_many) else 1
    if len(np.unique(group * rows + pair_many)) == len(np.unique(group)):
        return  # every group has one many-side row
    if len(np.unique(key)) != len(key):
        raise QueryError("execution", message)


def _result_labels(op: str, many: Labels, one: Labels, matching: Matching) -> Labels:
    """Prometheus' ``resultMetric``: the output label set of one matched pair."""
    lab = drop_name(many) if op in NAME_DROPPING else many
    if matching.card == ONE_TO_ONE:
        if matching.on:
            lab = keep_labels(lab, frozenset(matching.names))
        else:
            lab = drop_labels(lab, frozenset(matching.names))
    for name in matching.include:
        lab = set_label(lab, name, label_value(one, name))
    if matching.return_bool:
        lab = drop_name(lab)
    return lab
