"""PromQL script cases Fleetscope's embedded engine is known not to pass, with the reason.

Keys are case ids (``<set>/<file>:<line>``, as in ``test_promql_scripts.py``). Every listed case
is run and must still fail: a listed case that starts passing fails the test, so this list
stays true (remove the entry then). A case is listed here only with a reason a reader can check.

All Prometheus v2.42.0 reference cases pass at present (instant, range mode and the @-modifier
variants promql/test.go adds), so the list is empty.
"""

from __future__ import annotations

KNOWN_FAILURES: dict[str, str] = {}
