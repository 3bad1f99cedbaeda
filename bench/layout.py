"""Layout experiments for the embedded store: bytes per sample and select time (not run in CI).

Reads the samples of a Fleetscope DuckDB file (``bench/query.py``'s, attached read-only; nothing
in it changes) and writes them again, in several layouts, into scratch DuckDB files under
``--out``, one file per layout and data set, then reports for each

- bytes per sample: the blocks the scratch file uses after ``CHECKPOINT`` (``pragma
  database_size``: bulk inserts leave free blocks in the file, which later writes reuse),
  divided by its samples;
- the time to build it from samples in arrival order (the ingest cost), per million samples;
- the median time to read ``--series`` series over the whole range, and every series of the
  metric over the last 5 minutes (an instant query), back into NumPy arrays (what
  ``DuckDBStore.select`` returns), warm, from the files holding every metric; the answers are
  compared bit for bit with ``today``'s.

Layouts:

- ``today``: ``samples(series_id INTEGER, t BIGINT, v DOUBLE)`` in arrival order (the store's;
  for a backfilled file, blocks of hours sorted by series: the store's best case).
- ``live``: the same rows in time order, series by series within a tick: what live remote-write
  (one sample per series per request) leaves in the table.
- ``sorted``: the same rows ordered by ``(series_id, t)``, as a checkpoint-time sort would leave
  them; also each column alone, to see where the bytes go.
- ``sorted-int``: sorted, with ``v`` as ``BIGINT`` scaled by ``10^k`` (``k`` per series, the
  smallest that gives back every value bit for bit; series without one keep ``DOUBLE``).
- ``list-1d``: one row per series and day, ``t BIGINT[]`` and ``v DOUBLE[]`` (DuckDB compresses
  the list children).
- ``chunks-<span>``: one row per series and span, ``(series_id, t_start, t_end, n, t_blob,
  v_blob, exceptions)``: timestamps as delta-of-deltas; values as deltas of ``v·10^k`` when
  some ``k ≤ 9`` gives every value back bit for bit (NaNs, staleness markers included, kept as
  exceptions), else zstd'd XOR with the previous value (Gorilla's idea, byte-aligned). Integers
  are zigzagged, then stored either in the narrowest whole-byte width and zstd'd, or bit-packed
  at their bit width, whichever is smaller. Encoded and decoded with NumPy and cramjam's zstd
  (both already dependencies); a read decodes all its chunks at once (segmented cumulative
  sums), with one zstd call per blob.

    .venv/bin/python bench/layout.py --db /tmp/fleetscope-query-bench/fleetscope/fleetscope.duckdb
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cramjam
import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
GPU_GAUGES = (
    "fleet_gpu_utilization_ratio",
    "fleet_gpu_power_watts",
    "fleet_gpu_temperature_celsius",
)
HOUR_MS = 3_600_000
SPANS = {"2h": 2 * HOUR_MS, "1d": 24 * HOUR_MS}
ZSTD_LEVEL = 3
RAW, DECIMAL, XOR = 0, 1, 2  # value codecs
MAX_SCALE = 9
MEMORY_LIMIT = "6GB"  # the machine is shared: let DuckDB spill rather than take it all


# ---------------------------------------------------------------------------- the codec


def _zigzag(x: I64) -> npt.NDArray[np.uint64]:
    return ((x << 1) ^ (x >> 63)).view(np.uint64)


def _unzigzag(u: npt.NDArray[np.uint64]) -> I64:
    return (u >> np.uint64(1)).view(np.int64) ^ -(u & np.uint64(1)).view(np.int64)


def _pack(u: npt.NDArray[np.uint64]) -> bytes:
    """Unsigned integers, the smaller of two encodings, told apart by the first byte:

    - ``1, 2, 4, 8``: that many bytes each (the narrowest that holds them), zstd'd — good for
      repetitive data (zstd finds the repeats);
    - ``0x80 | b`` (``b ≥ 8``): ``b`` bits each, packed little-endian, not compressed — good
      for noise (zstd cannot beat the bit width there).
    """
    top = int(u.max()) if len(u) else 0
    width = 1 if top < 1 << 8 else 2 if top < 1 << 16 else 4 if top < 1 << 32 else 8
    out = bytes([width]) + bytes(
        cramjam.zstd.compress(u.astype(f"<u{width}").tobytes(), level=ZSTD_LEVEL)
    )
    bits = top.bit_length()
    if bits >= 8 and 1 + (len(u) * bits + 7) // 8 < len(out):
        planes = (u[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
        packed = np.packbits(planes.astype(np.uint8), bitorder="little")
        out = bytes([0x80 | bits]) + packed.tobytes()
    return out


def _unpack(blob: bytes) -> npt.NDArray[np.uint64]:
    if blob[0] & 0x80:
        bits = blob[0] & 0x7F
        n = (len(blob) - 1) * 8 // bits  # exact: the padding is shorter than one value
        planes = np.unpackbits(np.frombuffer(blob, np.uint8, offset=1), count=n * bits,
                               bitorder="little")  # fmt: skip
        weights = np.uint64(1) << np.arange(bits, dtype=np.uint64)
        weighted = planes.reshape(n, bits).astype(np.uint64) * weights
        return np.asarray(weighted.sum(axis=1, dtype=np.uint64), np.uint64)
    raw = bytes(cramjam.zstd.decompress(blob[1:]))
    return np.frombuffer(raw, f"<u{blob[0]}").astype(np.uint64)


def encode_t(t: I64) -> bytes:
    """Timestamps after the first: delta-of-delta (first delta against 0), zigzag, packed."""
    d = np.diff(t)
    return _pack(_zigzag(np.diff(d, prepend=0))) if len(d) else b""


def decode_t(t_start: int, blob: bytes) -> I64:
    if not blob:
        return np.array([t_start], np.int64)
    d = np.cumsum(_unzigzag(_unpack(blob)))
    return np.concatenate(([t_start], t_start + np.cumsum(d)))


def decimal_scale(v: F64) -> int | None:
    """The smallest ``k`` such that ``rint(v·10^k) / 10^k`` is ``v`` bit for bit, if any."""
    bits = v.view(np.int64)
    for k in range(MAX_SCALE + 1):
        s = 10.0**k
        ints = np.rint(v * s)
        if np.abs(ints).max(initial=0) < 2**52 and np.array_equal((ints / s).view(np.int64), bits):
            return k
    return None


def encode_v(v: F64) -> tuple[int, int, bytes, bytes]:
    """``(codec, k, blob, exceptions)``: NaNs (any bit pattern) go to ``exceptions`` as
    (position, bits) pairs and are replaced by the value before them for encoding."""
    nan = np.isnan(v)
    exceptions = b""
    if nan.any():
        where = np.flatnonzero(nan)
        exceptions = np.concatenate([where, v[where].view(np.int64)]).astype("<i8").tobytes()
        idx = np.where(nan, 0, np.arange(len(v)))
        np.maximum.accumulate(idx, out=idx)
        v = np.where(nan, np.where(nan[idx], 0.0, v[idx]), v)
    k = decimal_scale(v)
    if k is not None:
        ints = np.rint(v * 10.0**k).astype(np.int64)
        return DECIMAL, k, _pack(_zigzag(np.diff(ints, prepend=0))), exceptions
    bits = v.view(np.uint64)
    xor = np.bitwise_xor(bits, np.concatenate(([np.uint64(0)], bits[:-1])))
    return XOR, 0, bytes(cramjam.zstd.compress(xor.tobytes(), level=ZSTD_LEVEL)), exceptions


def decode_v(codec: int, k: int, blob: bytes, exceptions: bytes) -> F64:
    if codec == DECIMAL:
        v = np.cumsum(_unzigzag(_unpack(blob))).astype(np.float64) / 10.0**k
    else:
        xor = np.frombuffer(bytes(cramjam.zstd.decompress(blob)), np.uint64)
        v = np.bitwise_xor.accumulate(xor).view(np.float64)
    if exceptions:
        pairs = np.frombuffer(exceptions, "<i8").reshape(2, -1)
        v = v.copy()
        v[pairs[0]] = pairs[1].view(np.float64)
    return v


def _roundtrip_check(t: I64, v: F64) -> None:
    codec, k, blob, exc = encode_v(v)
    back = decode_v(codec, k, blob, exc)
    assert np.array_equal(back.view(np.int64), v.view(np.int64)), "value codec is not lossless"
    assert np.array_equal(decode_t(int(t[0]), encode_t(t)), t), "timestamp codec is lossy"


# ---------------------------------------------------------------------------- layouts


@dataclass
class Built:
    layout: str
    data: str
    samples: int
    bytes: int
    build_s: float


def _connect(path: Path, src: Path) -> duckdb.DuckDBPyConnection:
    if path.exists():
        path.unlink()
    con = duckdb.connect(str(path), config={"memory_limit": MEMORY_LIMIT})
    con.execute(f"ATTACH '{src}' AS src (READ_ONLY)")
    return con


def _finish(con: duckdb.DuckDBPyConnection, path: Path) -> int:
    """Bytes in the blocks the file uses: bulk inserts write blocks optimistically and the
    checkpoint rewrites them, leaving free blocks that the file keeps (and reuses later)."""
    con.execute("DETACH src")
    con.execute("CHECKPOINT")
    row = con.execute(
        "SELECT used_blocks * block_size, total_blocks FROM pragma_database_size()"
    ).fetchone()
    con.close()
    assert row is not None
    return int(row[0])


def _ids_sql(ids: Sequence[int] | None) -> str:
    return "" if ids is None else f"WHERE series_id IN ({','.join(map(str, ids))})"


def build_plain(
    src: Path, out: Path, ids: Sequence[int] | None, order: str, columns: str = "series_id, t, v"
) -> tuple[int, float]:
    """``samples`` with the given columns, in arrival order or sorted; (bytes, seconds)."""
    con = _connect(out, src)
    started = time.perf_counter()
    sort = {"sorted": "ORDER BY series_id, t", "live": "ORDER BY t, series_id"}.get(order, "")
    con.execute(f"CREATE TABLE samples AS SELECT {columns} FROM src.samples {_ids_sql(ids)} {sort}")
    con.execute("CHECKPOINT")
    took = time.perf_counter() - started
    return _finish(con, out), took


def _series_slices(src: Path, ids: Sequence[int] | None, rows_per_slice: int) -> list[list[int]]:
    con = duckdb.connect(str(src), read_only=True)
    counts = con.execute(
        f"SELECT series_id, count(*) FROM samples {_ids_sql(ids)} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    con.close()
    out: list[list[int]] = [[]]
    size = 0
    for sid, n in counts:
        if size + n > rows_per_slice and out[-1]:
            out.append([])
            size = 0
        out[-1].append(int(sid))
        size += int(n)
    return out


def _sorted_rows(src: Path, ids: Sequence[int]) -> tuple[I64, I64, F64]:
    con = duckdb.connect(str(src), read_only=True)
    cols = con.execute(
        f"SELECT series_id, t, v FROM samples {_ids_sql(ids)} ORDER BY series_id, t"
    ).fetchnumpy()
    con.close()
    return (
        np.asarray(cols["series_id"], np.int64),
        np.asarray(cols["t"], np.int64),
        np.asarray(cols["v"], np.float64),
    )


def _runs(keys: I64) -> tuple[I64, I64]:
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return starts, np.append(starts[1:], len(keys))


def build_sorted_int(src: Path, out: Path, ids: Sequence[int] | None) -> tuple[int, float]:
    """Sorted; per series the decimal scale ``k`` or none; ``v_int`` or ``v`` set."""
    con = _connect(out, src)
    con.execute("CREATE TABLE samples (series_id INTEGER, t BIGINT, v_int BIGINT, v DOUBLE)")
    con.execute("CREATE TABLE scales (series_id INTEGER, k TINYINT)")
    took = 0.0
    for part in _series_slices(src, ids, 20_000_000):
        sid, t, v = _sorted_rows(src, part)
        started = time.perf_counter()
        v_int = np.zeros(len(v), np.int64)
        v_int_null = np.ones(len(v), bool)
        scales: list[tuple[int, int]] = []
        for a, b in zip(*_runs(sid), strict=True):
            seg = v[a:b]
            k = None if np.isnan(seg).any() else decimal_scale(seg)
            if k is not None:
                v_int[a:b] = np.rint(seg * 10.0**k).astype(np.int64)
                v_int_null[a:b] = False
                scales.append((int(sid[a]), k))
        table = pa.table(
            {
                "series_id": pa.array(sid, pa.int32()),
                "t": pa.array(t),
                "v_int": pa.array(v_int, mask=v_int_null),
                "v": pa.array(v, mask=~v_int_null),
            }
        )
        scale_table = pa.table(
            {
                "series_id": pa.array([s for s, _ in scales], pa.int32()),
                "k": pa.array([k for _, k in scales], pa.int8()),
            }
        )
        con.register("incoming", table)
        con.register("incoming_scales", scale_table)
        con.execute("INSERT INTO samples SELECT * FROM incoming")
        con.execute("INSERT INTO scales SELECT * FROM incoming_scales")
        con.unregister("incoming")
        con.unregister("incoming_scales")
        took += time.perf_counter() - started
    con.execute("CHECKPOINT")
    return _finish(con, out), took


def build_list(src: Path, out: Path, ids: Sequence[int] | None) -> tuple[int, float]:
    """One row per series and UTC day with the day's timestamps and values as lists (built a
    slice of series at a time, to stay within the memory limit)."""
    con = _connect(out, src)
    con.execute(
        "CREATE TABLE days (series_id INTEGER, t_start BIGINT, t_end BIGINT, t BIGINT[], "
        "v DOUBLE[])"
    )
    started = time.perf_counter()
    for part in _series_slices(src, ids, 20_000_000):
        con.execute(
            "INSERT INTO days SELECT series_id, min(t), max(t), list(t ORDER BY t), "
            f"list(v ORDER BY t) FROM src.samples {_ids_sql(part)} "
            f"GROUP BY series_id, t // {24 * HOUR_MS} ORDER BY series_id, min(t)"
        )
    con.execute("CHECKPOINT")
    took = time.perf_counter() - started
    return _finish(con, out), took


_CHUNK_SCHEMA = pa.schema(
    [
        ("series_id", pa.int32()),
        ("t_start", pa.int64()),
        ("t_end", pa.int64()),
        ("n", pa.int32()),
        ("codec", pa.int8()),
        ("k", pa.int8()),
        ("t_blob", pa.binary()),
        ("v_blob", pa.binary()),
        ("exceptions", pa.binary()),
    ]
)


def encode_chunks(sid: I64, t: I64, v: F64, span_ms: int) -> pa.Table:
    """Rows sorted by (series, t) → one encoded chunk per series and aligned span."""
    key = sid * (1 << 40) + t // span_ms
    cols: dict[str, list[object]] = {name: [] for name in _CHUNK_SCHEMA.names}
    for a, b in zip(*_runs(key), strict=True):
        codec, k, vblob, exceptions = encode_v(v[a:b])
        for name, value in (
            ("series_id", int(sid[a])),
            ("t_start", int(t[a])),
            ("t_end", int(t[b - 1])),
            ("n", b - a),
            ("codec", codec),
            ("k", k),
            ("t_blob", encode_t(t[a:b])),
            ("v_blob", vblob),
            ("exceptions", exceptions),
        ):
            cols[name].append(value)
    return pa.table(cols, schema=_CHUNK_SCHEMA)


def build_chunks(
    src: Path, out: Path, ids: Sequence[int] | None, span_ms: int
) -> tuple[int, float, dict[int, int]]:
    """The chunk table; (bytes, encode + insert seconds, chunks per value codec)."""
    con = _connect(out, src)
    con.execute(
        "CREATE TABLE chunks (series_id INTEGER, t_start BIGINT, t_end BIGINT, n INTEGER, "
        "codec TINYINT, k TINYINT, t_blob BLOB, v_blob BLOB, exceptions BLOB)"
    )
    took = 0.0
    codecs: dict[int, int] = {}
    for part in _series_slices(src, ids, 20_000_000):
        sid, t, v = _sorted_rows(src, part)
        started = time.perf_counter()
        table = encode_chunks(sid, t, v, span_ms)
        con.register("incoming", table)
        con.execute("INSERT INTO chunks SELECT * FROM incoming")
        con.unregister("incoming")
        took += time.perf_counter() - started
        for c in table.column("codec").to_pylist():
            codecs[c] = codecs.get(c, 0) + 1
    if ids is not None and len(ids) > 0:  # spot-check losslessness on one series
        sid, t, v = _sorted_rows(src, [ids[0]])
        _roundtrip_check(t, v)
    con.execute("CHECKPOINT")
    return _finish(con, out), took, codecs


# ---------------------------------------------------------------------------- reads


Reader = Callable[[duckdb.DuckDBPyConnection, list[int], int, int], list[tuple[I64, F64]]]


def _split(sids: I64, ts: I64, vs: F64) -> list[tuple[I64, F64]]:
    if len(sids) == 0:
        return []
    a, b = _runs(sids)
    return [(ts[i:j], vs[i:j]) for i, j in zip(a, b, strict=True)]


def read_plain(
    con: duckdb.DuckDBPyConnection, ids: list[int], mint: int, maxt: int
) -> list[tuple[I64, F64]]:
    """``DuckDBStore.select``'s query (no hints)."""
    cur = con.cursor()
    cur.register("wanted", pa.table({"id": pa.array(ids, pa.int32())}))
    cols = cur.execute(
        "SELECT s.series_id, s.t, s.v FROM samples s JOIN wanted w ON s.series_id = w.id "
        "WHERE s.t BETWEEN ? AND ? ORDER BY 1, 2",
        [mint, maxt],
    ).fetchnumpy()
    cur.close()
    return _split(
        np.asarray(cols["series_id"], np.int64),
        np.asarray(cols["t"], np.int64),
        np.asarray(cols["v"], np.float64),
    )


def read_sorted_int(
    con: duckdb.DuckDBPyConnection, ids: list[int], mint: int, maxt: int
) -> list[tuple[I64, F64]]:
    cur = con.cursor()
    cur.register("wanted", pa.table({"id": pa.array(ids, pa.int32())}))
    cols = cur.execute(
        "SELECT s.series_id, s.t, coalesce(s.v_int / pow(10, c.k), s.v) AS v FROM samples s "
        "JOIN wanted w ON s.series_id = w.id LEFT JOIN scales c ON c.series_id = s.series_id "
        "WHERE s.t BETWEEN ? AND ? ORDER BY 1, 2",
        [mint, maxt],
    ).fetchnumpy()
    cur.close()
    return _split(
        np.asarray(cols["series_id"], np.int64),
        np.asarray(cols["t"], np.int64),
        np.asarray(cols["v"], np.float64),
    )


def read_list(
    con: duckdb.DuckDBPyConnection, ids: list[int], mint: int, maxt: int
) -> list[tuple[I64, F64]]:
    cur = con.cursor()
    cur.register("wanted", pa.table({"id": pa.array(ids, pa.int32())}))
    table = cur.sql(
        "SELECT d.series_id, d.t, d.v FROM days d JOIN wanted w ON d.series_id = w.id "
        "WHERE d.t_end >= $1 AND d.t_start <= $2 ORDER BY d.series_id, d.t_start",
        params=[mint, maxt],
    ).to_arrow_table()
    cur.close()
    assert table is not None
    counts = pc.list_value_length(table.column("t")).to_numpy()
    sids = np.repeat(table.column("series_id").to_numpy(), counts).astype(np.int64)
    ts = pc.list_flatten(table.column("t")).to_numpy()
    vs = pc.list_flatten(table.column("v")).to_numpy()
    keep = (ts >= mint) & (ts <= maxt)
    return _split(sids[keep], ts[keep], vs[keep])


def read_chunks(
    con: duckdb.DuckDBPyConnection, ids: list[int], mint: int, maxt: int
) -> list[tuple[I64, F64]]:
    """Chunks overlapping the range, decoded all at once: one zstd call per blob, then NumPy
    over the concatenation (segmented cumulative sums and XORs restart at each chunk)."""
    cur = con.cursor()
    cur.register("wanted", pa.table({"id": pa.array(ids, pa.int32())}))
    rows = cur.execute(
        "SELECT c.series_id, c.t_start, c.n, c.codec, c.k, c.t_blob, c.v_blob, c.exceptions "
        "FROM chunks c JOIN wanted w ON c.series_id = w.id "
        "WHERE c.t_end >= ? AND c.t_start <= ? ORDER BY c.series_id, c.t_start",
        [mint, maxt],
    ).fetchall()
    cur.close()
    if not rows:
        return []
    sid, t_start, n, codec, k, t_blobs, v_blobs, exc_blobs = zip(*rows, strict=True)
    counts = np.array(n, np.int64)
    starts = np.cumsum(counts) - counts
    total = int(counts.sum())
    first = np.zeros(total, np.bool_)
    first[starts] = True
    # timestamps: [0, dod…] per chunk → deltas → + t_start
    y = np.zeros(total, np.int64)
    y[~first] = _unzigzag(np.concatenate([_unpack(b) for b in t_blobs if b]))
    d = _segmented_cumsum(y, starts, counts)
    d[first] = np.array(t_start, np.int64)
    t = _segmented_cumsum(d, starts, counts)
    # values, per codec
    codecs = np.array(codec, np.int8)
    per_sample = np.repeat(codecs, counts)
    v = np.empty(total, np.float64)
    dec = codecs == DECIMAL
    if dec.any():
        z = np.concatenate(
            [_unzigzag(_unpack(b)) for b, c in zip(v_blobs, codec, strict=True) if c == DECIMAL]
        )
        lens, offs = counts[dec], np.cumsum(counts[dec]) - counts[dec]
        ints = _segmented_cumsum(z, offs, lens)
        scale = np.repeat(10.0 ** np.array(k, np.float64)[dec], lens)
        v[per_sample == DECIMAL] = ints.astype(np.float64) / scale
    if (~dec).any():
        raw = b"".join(
            bytes(cramjam.zstd.decompress(b))
            for b, c in zip(v_blobs, codec, strict=True)
            if c == XOR
        )
        x = np.frombuffer(raw, np.uint64)
        lens, offs = counts[~dec], np.cumsum(counts[~dec]) - counts[~dec]
        acc = np.bitwise_xor.accumulate(x)
        before = np.where(offs > 0, acc[np.maximum(offs - 1, 0)], np.uint64(0))
        v[per_sample == XOR] = (acc ^ np.repeat(before, lens)).view(np.float64)
    for i, blob in enumerate(exc_blobs):
        if blob:
            pairs = np.frombuffer(blob, "<i8").reshape(2, -1)
            v[starts[i] + pairs[0]] = pairs[1].view(np.float64)
    sids = np.repeat(np.array(sid, np.int64), counts)
    keep = (t >= mint) & (t <= maxt)
    return _split(sids[keep], t[keep], v[keep])


def _segmented_cumsum(x: I64, starts: I64, counts: I64) -> I64:
    """Cumulative sums of ``x`` restarting at each ``starts`` (segments of ``counts``)."""
    c = np.cumsum(x)
    base = c[starts] - x[starts]
    return c - np.repeat(base, counts)


def _clip(t: I64, v: F64, mint: int, maxt: int) -> tuple[I64, F64]:
    keep = (t >= mint) & (t <= maxt)
    return t[keep], v[keep]


def time_reads(
    path: Path, reader: Reader, ids: list[int], mint: int, maxt: int, repeat: int
) -> tuple[float, float, float, int]:
    """Median, min, max seconds of ``reader`` (warm) and the samples it returned."""
    con = duckdb.connect(str(path), read_only=True)
    n = sum(len(t) for t, _ in reader(con, ids, mint, maxt))
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        reader(con, ids, mint, maxt)
        runs.append(time.perf_counter() - started)
    con.close()
    return statistics.median(runs), min(runs), max(runs), n


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--db", type=Path, default=Path("/tmp/fleetscope-query-bench/fleetscope/fleetscope.duckdb")
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/fleetscope-layout-bench"))
    parser.add_argument("--series", type=int, default=64, help="series read back per select")
    parser.add_argument("--read-metric", default="fleet_gpu_utilization_ratio")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-all", action="store_true", help="only the GPU gauges, not all")
    parser.add_argument("--no-gauges", action="store_true", help="only all samples")
    parser.add_argument(
        "--reads-only", action="store_true", help="time the reads on files kept by --keep"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch files")
    args = parser.parse_args()
    src: Path = args.db
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    con = duckdb.connect(str(src), read_only=True)
    by_name: dict[str, list[int]] = {}
    for sid, labels in con.execute("SELECT id, labels FROM series ORDER BY id").fetchall():
        name = dict(json.loads(labels)).get("__name__", "")
        by_name.setdefault(name, []).append(int(sid))
    counts = dict(con.execute("SELECT series_id, count(*) FROM samples GROUP BY 1").fetchall())
    row = con.execute("SELECT min(t), max(t) FROM samples").fetchone()
    con.close()
    assert row is not None
    mint, maxt = int(row[0]), int(row[1])
    print(
        f"{src}: {sum(counts.values()):,} samples, {len(by_name)} metrics, "
        f"{sum(len(v) for v in by_name.values()):,} series; {src.stat().st_size:,} bytes "
        f"({src.stat().st_size / sum(counts.values()):.3f} B/sample as the store left it)"
    )

    datasets: dict[str, list[int] | None] = {}
    if not args.no_gauges:
        datasets.update({m: by_name[m] for m in GPU_GAUGES if m in by_name})
    if not args.no_all:
        datasets["all"] = None
    results: list[tuple[str, str, int, int, float, str]] = []
    for data, ids in {} if args.reads_only else datasets.items():
        samples = sum(counts.values()) if ids is None else sum(counts.get(i, 0) for i in ids)
        print(f"\n{data}: {samples:,} samples", flush=True)

        def record(
            layout: str,
            size: int,
            took: float,
            note: str = "",
            _data: str = data,
            _samples: int = samples,
        ) -> None:
            results.append((_data, layout, _samples, size, took, note))
            print(
                f"  {layout:<22} {size / _samples:7.3f} B/sample  build "
                f"{took / _samples * 1e6:6.3f} s/M samples {note}",
                flush=True,
            )

        for order in ("today", "live", "sorted"):
            size, took = build_plain(src, out / f"{data}-{order}.duckdb", ids, order)
            record(order, size, took)
        if data != "all":
            for column in ("series_id", "t", "v"):
                size, took = build_plain(
                    src, out / f"{data}-col-{column}.duckdb", ids, "sorted", column
                )
                record(f"sorted: {column} only", size, took)
                (out / f"{data}-col-{column}.duckdb").unlink()
        size, took = build_sorted_int(src, out / f"{data}-sorted-int.duckdb", ids)
        record("sorted-int", size, took)
        size, took = build_list(src, out / f"{data}-list-1d.duckdb", ids)
        record("list-1d", size, took)
        for span, span_ms in SPANS.items():
            size, took, codecs = build_chunks(
                src, out / f"{data}-chunks-{span}.duckdb", ids, span_ms
            )
            names = {RAW: "raw", DECIMAL: "decimal", XOR: "xor"}
            note = "(" + ", ".join(f"{names[c]} {n}" for c, n in sorted(codecs.items())) + ")"
            record(f"chunks-{span}", size, took, note)

    data = "all" if not args.no_all else args.read_metric
    readers: dict[str, Reader] = {
        "today": read_plain,
        "live": read_plain,
        "sorted": read_plain,
        "sorted-int": read_sorted_int,
        "list-1d": read_list,
        **{f"chunks-{s}": read_chunks for s in SPANS},
    }
    every = by_name.get(args.read_metric, [])
    reads = (  # what a range query over the week and an instant query ("now") read
        (f"{args.series} series × {(maxt - mint) / 86_400_000:.1f} d", every[: args.series], mint),
        (f"{len(every)} series × the last 5 min", every, maxt - 300_000),
    )
    for what, read_ids, lo_t in reads:
        print(f"\nselect {what} of {args.read_metric} from the '{data}' files, warm:")
        reference: list[tuple[I64, F64]] | None = None
        for layout, reader in readers.items():
            path = out / f"{data}-{layout}.duckdb"
            med, lo, hi, n = time_reads(path, reader, read_ids, lo_t, maxt, args.repeat)
            con = duckdb.connect(str(path), read_only=True)
            got = reader(con, read_ids, lo_t, maxt)
            con.close()
            if reference is None:
                reference = got
            same = len(got) == len(reference) and all(
                np.array_equal(a[0], b[0])
                and np.array_equal(a[1].view(np.int64), b[1].view(np.int64))
                for a, b in zip(got, reference, strict=True)
            )
            print(
                f"  {layout:<12} {med * 1000:7.1f} ms [{lo * 1000:.1f}–{hi * 1000:.1f}]  {n:,} "
                f"samples{'' if same else '  <-- DIFFERENT from today'}",
                flush=True,
            )
    print(f"\n{'data':<32}{'layout':<24}{'samples':>14}{'bytes':>15}{'B/sample':>10}{'s/M':>8}")
    for data_name, layout, samples, size, took, note in results:
        per = size / samples if samples else math.nan
        print(
            f"{data_name:<32}{layout:<24}{samples:>14,}{size:>15,}{per:>10.3f}"
            f"{took / samples * 1e6:>8.3f} {note}"
        )
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
