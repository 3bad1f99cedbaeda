"""Ingest stage: everything that brings outside data into the stores, checked at the door.

- :mod:`.validate` checks a :class:`~fleetscope.store.SampleBatch` (label names, timestamps,
  order inside the batch) before it reaches a :class:`~fleetscope.store.MetricStore`.
- :mod:`.exposition` turns Prometheus text exposition (and OpenMetrics) into a batch.
- :mod:`.records` validates job records and upserts them into a
  :class:`~fleetscope.store.RecordStore`, all or nothing.
- :mod:`.receiver` is the HTTP edge: Prometheus remote-write 1.0 at ``/api/v1/write``,
  exposition import at ``/api/v1/import/prometheus`` and job intake at ``/api/v1/records/jobs``.
- :mod:`.scrape` pulls ``/metrics`` endpoints on an interval, as Prometheus does, with ``up``.

Bad input is refused with a message that says what is wrong and nothing of it is stored; the HTTP
edge answers 4xx for it, never 5xx. The remote-write wire codec is :mod:`fleetscope.remotewrite`.
"""

from fleetscope.ingest.validate import IngestError

__all__ = ["IngestError"]
