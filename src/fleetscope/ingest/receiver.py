"""HTTP ingest edge: remote-write 1.0, exposition import and job intake (a FastAPI router).

- ``POST /api/v1/write``: Prometheus remote-write 1.0. ``Content-Type`` must be
  ``application/x-protobuf`` (415 otherwise, also for remote-write 2.0's ``proto=`` parameter);
  ``Content-Encoding`` must be ``snappy`` when present (415 otherwise). Bodies over
  :data:`MAX_BODY_BYTES` get 413. The body is decoded, validated and appended; 204 comes only
  after the store's append returned (appends are durable). Bad input gets 400 with a plain-text
  message, as Prometheus answers.
- ``POST /api/v1/import/prometheus``: text exposition (OpenMetrics when the Content-Type says so,
  gzip when Content-Encoding says so), ``?extra_label=name=value`` repeatable (VictoriaMetrics'
  parameter); samples without a timestamp get the time of the request. 204, or 400.
- ``POST /api/v1/records/jobs``: a JSON list of jobs, all or nothing; 200 ``{"accepted": n}``,
  400 for a body that is not JSON, 422 for bad records.
- ``POST /api/v1/records/events``: a JSON list of events (XIDs, checkpoints, deployments …),
  the same way: all or nothing, 200 ``{"accepted": n}``, 400 for non-JSON, 422 for bad records.

Decoding and appending run in the threadpool so the event loop stays free. Remote-write
requests are decoded and validated one at a time (a lock): that work is Python and NumPy under
the GIL, and threads taking turns inside it (NumPy lets the GIL go around every operation) cost
more CPU than they overlap. Appends run outside the lock, so the store can group the appends of
requests that arrive together into one commit while the next request is decoded. Decoded label
sets are the decoder's own, shared and not copied (``shared_labels``): the validator and the
store only read them. No 5xx for bad input: every refusal from the codec, the validator or the
store (``StoreError``) is a 4xx.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from fleetscope import remotewrite
from fleetscope.ingest import exposition
from fleetscope.ingest.records import IntakeError, accept_events, accept_jobs
from fleetscope.ingest.validate import IngestError, validate
from fleetscope.store import MetricStore, RecordStore, SampleBatch, StoreError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024
"""Largest request body accepted, as sent (compressed), like VictoriaMetrics' default."""
MAX_TEXT_BYTES = 256 * 1024 * 1024
"""Largest exposition text after gzip decompression."""

_REFUSED = (remotewrite.RemoteWriteError, IngestError, StoreError)


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> Response:
        return PlainTextResponse(self.message + "\n", status_code=self.status)


def _media_type(request: Request) -> tuple[str, dict[str, str]]:
    raw = request.headers.get("content-type", "")
    main, *params = raw.split(";")
    parsed = {}
    for p in params:
        key, _, value = p.partition("=")
        parsed[key.strip().lower()] = value.strip().strip('"')
    return main.strip().lower(), parsed


def _check_remote_write_headers(request: Request) -> None:
    media, params = _media_type(request)
    if media != remotewrite.CONTENT_TYPE:
        shown = media or "none"
        raise _Refusal(
            415, f"unsupported Content-Type {shown!r}: expected {remotewrite.CONTENT_TYPE}"
        )
    proto = params.get("proto", "prometheus.WriteRequest")
    if proto != "prometheus.WriteRequest":
        raise _Refusal(
            415, f"unsupported remote-write message {proto!r}: only 1.0 (prometheus.WriteRequest)"
        )
    encoding = request.headers.get("content-encoding", "snappy").strip().lower()
    if encoding != "snappy":
        raise _Refusal(415, f"unsupported Content-Encoding {encoding!r}: expected snappy")


async def _read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or a 413 refusal once it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refusal(413, f"body of {declared} bytes is over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refusal(413, f"body is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _store(
    metrics: MetricStore,
    make_batch: Callable[[], SampleBatch],
    cpu: AbstractContextManager[object] | None = None,
) -> Response:
    """Build and validate a batch (holding ``cpu`` if given) and append it (in a worker thread);
    204 or a 400 with the reason."""
    try:
        with cpu or nullcontext():
            batch = validate(make_batch())
        metrics.append(batch)
    except _REFUSED as e:
        log.info("refused ingest: %s", e)
        return PlainTextResponse(f"{e}\n", status_code=400)
    return Response(status_code=204)


def _extra_labels(request: Request) -> dict[str, str]:
    extra: dict[str, str] = {}
    for item in request.query_params.getlist("extra_label"):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _Refusal(400, f"bad extra_label {item!r}: expected name=value")
        extra[name] = value
    return extra


def _text_of(body: bytes, encoding: str) -> str:
    if encoding in ("gzip", "x-gzip"):
        try:
            d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            body = d.decompress(body, MAX_TEXT_BYTES)
            if d.unconsumed_tail:
                raise _Refusal(413, f"decompressed body is over the {MAX_TEXT_BYTES} byte limit")
            if not d.eof:
                raise _Refusal(400, "bad gzip body: truncated")
        except zlib.error as e:
            raise _Refusal(400, f"bad gzip body: {e}") from None
    elif encoding not in ("", "identity"):
        raise _Refusal(415, f"unsupported Content-Encoding {encoding!r}: expected gzip or none")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Refusal(400, f"body is not UTF-8 text: {e}") from None


def make_router(metrics: MetricStore, records: RecordStore) -> APIRouter:
    """Routes of the ingest edge, writing into ``metrics`` and ``records``."""
    router = APIRouter(tags=["ingest"])
    decoding = threading.Lock()  # remote-write decoding and validating: one at a time

    @router.post("/api/v1/write", status_code=204, response_class=Response)
    async def remote_write(request: Request) -> Response:
        try:
            _check_remote_write_headers(request)
            body = await _read_body(request)
        except _Refusal as r:
            return r.response()
        return await run_in_threadpool(
            _store, metrics, lambda: remotewrite.decode(body, shared_labels=True), decoding
        )

    @router.post("/api/v1/import/prometheus", status_code=204, response_class=Response)
    async def import_prometheus(request: Request) -> Response:
        now_ms = int(time.time() * 1000)
        try:
            extra = _extra_labels(request)
            body = await _read_body(request)
            encoding = request.headers.get("content-encoding", "").strip().lower()
            text = _text_of(body, encoding)
        except _Refusal as r:
            return r.response()
        om = exposition.is_openmetrics(request.headers.get("content-type"))
        return await run_in_threadpool(
            _store, metrics, lambda: exposition.parse(text, now_ms, extra, openmetrics=om)
        )

    async def intake(request: Request, accept: Callable[[RecordStore, object], int]) -> Response:
        try:
            body = await _read_body(request)
        except _Refusal as r:
            return r.response()
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            return PlainTextResponse(f"body is not JSON: {e}\n", status_code=400)
        try:
            accepted = await run_in_threadpool(accept, records, payload)
        except IntakeError as e:
            return PlainTextResponse(f"{e}\n", status_code=422)
        return JSONResponse({"accepted": accepted})

    @router.post("/api/v1/records/jobs")
    async def intake_jobs(request: Request) -> Response:
        return await intake(request, accept_jobs)

    @router.post("/api/v1/records/events")
    async def intake_events(request: Request) -> Response:
        return await intake(request, accept_events)

    return router
