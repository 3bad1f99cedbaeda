"""Data directories as older versions of the store left them, for the upgrade tests."""

from __future__ import annotations

from pathlib import Path

import duckdb

# ``blocks`` before ``run_rows``: each sample's time stored as is
_BLOCKS_BEFORE_RUN_ROWS = (
    "CREATE TABLE blocks (run INTEGER NOT NULL, metric_key INTEGER NOT NULL, "
    "series_id INTEGER NOT NULL, t BIGINT NOT NULL, v DOUBLE NOT NULL)"
)


def blocks_before_run_rows(path: Path, table: str | None = None) -> None:
    """Store the runs of the (closed) store at ``path`` as a ``blocks`` table of
    ``(run, metric_key, series_id, t, v)``: its own runs, or the rows of its table ``table``
    (which goes)."""
    con = duckdb.connect(str(path))
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute("DROP VIEW blocks")
        con.execute(_BLOCKS_BEFORE_RUN_ROWS)
        con.execute(
            "INSERT INTO blocks "
            + (
                f"FROM {table}"
                if table
                else "SELECT run, metric_key, series_id, u - o, v FROM run_rows"
            )
            + " ORDER BY 1, 2, 3, 4"
        )
        if table:
            con.execute(f"DROP TABLE {table}")
        con.execute("DROP TABLE run_rows")
        con.execute("COMMIT")
    finally:
        con.close()


def cells_before_cell_rows(path: Path) -> None:
    """Store the cells of the (closed) store at ``path`` as the first cells layout did: a
    ``cells`` table keeping ``c`` as is, recorded as layout 1."""
    con = duckdb.connect(str(path))
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(
            "CREATE TABLE cells_v1 AS SELECT metric_key, series_id, c, n, s, last_dt, last_v, "
            "top_dt, top_real, first_dt, first_v, inc, bad FROM cells ORDER BY 1, 2, 3"
        )
        con.execute("DROP VIEW cells")
        con.execute("DROP TABLE cell_rows")
        con.execute("ALTER TABLE cells_v1 RENAME TO cells")
        con.execute("UPDATE store_meta SET value = 1 WHERE key = 'cells_version'")
        con.execute("COMMIT")
    finally:
        con.close()
