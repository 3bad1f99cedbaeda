"""The web app through its HTTP interface: token auth, the overview page, the fleet JSON API."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from fleetscope.analyze import overview as ov
from fleetscope.query import Engine, QueryError, QueryResult
from fleetscope.query.engine import Evaluator, parse
from fleetscope.store.duckdb import DuckDBStore
from fleetscope.web.app import WebSettings, create_app
from fleetscope.web.auth import AdminToken, login_url

from .conftest import GPU_HOURS, TestClient
from .fakes import FakeEngine

HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}

# ----------------------------------------------------------------------------- the token


def test_token_file_is_created_once_with_mode_0600_and_reused(
    tmp_path: Path, store: DuckDBStore
) -> None:
    settings = WebSettings(data_dir=tmp_path / "new" / "data")
    first = create_app(settings, store, store).state.admin_token
    path = settings.data_dir / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.value and len(first.value) >= 32
    second = create_app(settings, store, store).state.admin_token
    assert second.value == first.value
    assert [p.name for p in settings.data_dir.iterdir()] == ["admin.token"]


def test_an_empty_token_file_is_refused_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("\n")
    with pytest.raises(ValueError, match="delete it"):
        AdminToken.load_or_create(tmp_path)


def test_login_url() -> None:
    assert login_url("http://127.0.0.1:8000/", "a-b_c") == "http://127.0.0.1:8000/login?token=a-b_c"


# ----------------------------------------------------------------------------- who gets in


def test_healthz_needs_no_token(client: TestClient) -> None:
    r = client.get("/healthz")
    assert (r.status_code, r.text) == (200, "ok")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/", id="page"),
        pytest.param("/static/style.css", id="static"),
        pytest.param("/static/plotly.min.js", id="plotly"),
        pytest.param("/api/docs", id="docs"),
    ],
)
def test_a_browser_without_token_gets_a_401_page_saying_how_to_log_in(
    client: TestClient, settings: WebSettings, path: str
) -> None:
    r = client.get(path, headers=HTML)
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("text/html")
    assert str((settings.data_dir / "admin.token").resolve()) in r.text
    assert 'action="/login"' in r.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/api/v1/fleet/usage", id="usage"),
        pytest.param("GET", "/api/v1/fleet/overview", id="overview"),
        pytest.param("GET", "/", id="page-without-accept-html"),
        pytest.param("POST", "/api/v1/write", id="remote-write"),
        pytest.param("POST", "/api/v1/records/jobs", id="job-intake"),
    ],
)
def test_a_client_without_token_gets_401_json(client: TestClient, method: str, path: str) -> None:
    r = client.request(method, path, headers={"Accept": "*/*"})
    assert r.status_code == 401
    assert "Bearer" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Bearer wrong", id="wrong-token"),
        pytest.param("Basic d3Jvbmc6d3Jvbmc=", id="basic"),
        pytest.param("Bearer", id="empty"),
        pytest.param("Bearer \u00e9t\u00e9".encode(), id="non-ascii"),
    ],
)
def test_a_wrong_authorization_header_is_refused(client: TestClient, header: str | bytes) -> None:
    assert client.get("/api/v1/fleet/usage", headers={"Authorization": header}).status_code == 401


def test_the_bearer_token_opens_the_api_and_ingest(client: TestClient, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/fleet/usage", headers=auth).status_code == 200
    # past the guard, the ingest router answers (a bad body is its 4xx, not our 401)
    assert client.post("/api/v1/records/jobs", headers=auth, content=b"[]").status_code == 200


def test_login_sets_an_httponly_cookie_that_is_not_the_token(
    client: TestClient, token: str
) -> None:
    r = client.get(f"/login?token={token}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert token not in cookie
    page = client.get("/", headers=HTML)
    assert page.status_code == 200 and "Fleet GPU utilization" in page.text
    client.get("/logout", follow_redirects=False)
    client.cookies.clear()
    assert client.get("/", headers=HTML).status_code == 401


@pytest.mark.parametrize(
    "query",
    [pytest.param("?token=wrong", id="wrong"), pytest.param("", id="missing")],
)
def test_login_with_a_wrong_or_no_token_is_a_401_page(client: TestClient, query: str) -> None:
    r = client.get(f"/login{query}", headers=HTML, follow_redirects=False)
    assert r.status_code == 401 and "set-cookie" not in r.headers
    assert ("not this server" in r.text) == bool(query)
    assert 'name="next" value="/"' in r.text  # never back to /login


@pytest.mark.parametrize(
    ("target", "location"),
    [
        pytest.param("/?window=7d", "/?window=7d", id="local"),
        pytest.param("//evil.example/x", "/", id="other-host"),
        pytest.param("https://evil.example/", "/", id="absolute"),
    ],
)
def test_the_login_form_returns_to_a_local_page_only(
    client: TestClient, token: str, target: str, location: str
) -> None:
    r = client.post("/login", data={"token": token, "next": target}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, location)


def test_responses_carry_defensive_headers(authed: TestClient) -> None:
    r = authed.get("/")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


# ----------------------------------------------------------------------------- JSON API


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        pytest.param("", GPU_HOURS, id="default-7d-by-team"),
        pytest.param("?window=2w&by=team", GPU_HOURS, id="2w"),
        pytest.param("?window=30m", {"vision": 0.5, "llm": 0.5}, id="30m"),
        pytest.param("?window=1h30m&by=user", {"ana": 1.5, "li": 1.0}, id="by-user"),
        pytest.param("?window=24h&by=job", {"v1": 2.0, "l1": 1.0}, id="by-job"),
    ],
)
def test_usage_api(authed: TestClient, query: str, expected: dict[str, float]) -> None:
    r = authed.get(f"/api/v1/fleet/usage{query}")
    assert r.status_code == 200
    assert r.json() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        pytest.param("?window=7", "not a duration", id="no-unit"),
        pytest.param("?window=seven", "not a duration", id="words"),
        pytest.param("?window=0s", "longer than zero", id="zero"),
        pytest.param("?window=", "not a duration", id="empty"),
        pytest.param("?window=1000d", "longer than 400d", id="too-long"),
        pytest.param("?by=colour", "by must be one of", id="bad-by"),
    ],
)
def test_usage_api_bad_parameters_are_400(authed: TestClient, query: str, message: str) -> None:
    r = authed.get(f"/api/v1/fleet/usage{query}")
    assert r.status_code == 400
    assert message in r.json()["detail"]


def test_overview_api(authed: TestClient) -> None:
    body = authed.get("/api/v1/fleet/overview?window=24h").json()
    assert body["states"] == {"busy": 1, "allocated_idle": 1, "unallocated": 1, "down": 0}
    assert body["gpu_hours"] == pytest.approx(GPU_HOURS)
    verdicts = {q["number"]: (q["verdict"], q["capability"] is None) for q in body["questions"]}
    # Q1: g1 idle at 6 of the 18 held steps; Q5: 2 of 3 GPUs held and 4 GPUs pending
    assert verdicts == {1: ("act", True), 2: (None, False), 3: (None, False), 4: (None, False),
                        5: ("watch", True)}  # fmt: skip
    assert [r["id"] for r in body["running"]] == ["v1", "l1"]
    assert [(r["id"], r["gpus"], r["since_s"]) for r in body["pending"]] == [("p1", 4, 1200.0)]
    assert authed.get("/api/v1/fleet/overview?window=x").status_code == 400


# ----------------------------------------------------------------------------- the page


def test_overview_page(authed: TestClient) -> None:
    r = authed.get("/?window=6h&refresh=30s")
    assert r.status_code == 200
    html = r.text
    assert html.count('class="question ') == 5
    assert html.count("not measured yet") == 3
    assert '<meta http-equiv="refresh" content="30">' in html
    assert 'href="/?window=7d&amp;refresh=30s"' in html  # pickers keep the other setting
    assert "avg(fleet_gpu_utilization_ratio)" in html  # the copyable PromQL
    embedded = re.search(r'id="overview-charts">(.*?)</script>', html, re.S)
    assert embedded is not None
    charts = json.loads(embedded[1])
    assert {c["id"] for c in charts} == {
        "chart-utilization", "chart-states", "chart-team-hours", "chart-team-hours-time",
        "chart-quota",
    }  # fmt: skip
    for c in charts:
        assert all(len(t["y"]) for t in c["figure"]["data"]), c["id"]
        assert f'id="{c["id"]}"' in html
    assert re.search(r'<td class="mono">p1</td>.*?<td class="num">20m</td>', html, re.S)


@pytest.mark.parametrize(
    "query", [pytest.param("?window=abc", id="window"), pytest.param("?refresh=5s", id="refresh")]
)
def test_overview_page_bad_parameters_are_a_400_page(authed: TestClient, query: str) -> None:
    r = authed.get(f"/{query}")
    assert r.status_code == 400 and "Cannot show this view" in r.text


def test_plotly_is_served_from_the_installed_package(authed: TestClient) -> None:
    r = authed.get("/static/plotly.min.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert len(r.content) > 1_000_000 and b"plotly" in r.content[:2000].lower()


# ----------------------------------------------------------------------------- the engine


class Recording:
    """An engine that passes every query on and remembers its text (a fake around a real one)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queries: list[str] = []

    def instant(self, query: str, t_ms: int) -> QueryResult:
        self.queries.append(query)
        return self.engine.instant(query, t_ms)

    def range(self, query: str, start_ms: int, end_ms: int, step_ms: int) -> QueryResult:
        self.queries.append(query)
        return self.engine.range(query, start_ms, end_ms, step_ms)

    def series(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[dict[str, str]]:
        return self.engine.series(match, start_ms, end_ms)

    def label_names(
        self, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        return self.engine.label_names(match, start_ms, end_ms)

    def label_values(
        self, name: str, match: Sequence[str], start_ms: int | None, end_ms: int | None
    ) -> list[str]:
        return self.engine.label_values(name, match, start_ms, end_ms)


def client_for(settings: WebSettings, metrics: DuckDBStore, engine: Engine) -> TestClient:
    client = TestClient(create_app(settings, metrics, metrics, engine))
    token = (settings.data_dir / "admin.token").read_text().strip()
    client.headers["Authorization"] = f"Bearer {token}"
    return client


@pytest.mark.parametrize("window", ["1h", "24h", "7d"])
def test_the_queries_shown_are_the_queries_run(
    settings: WebSettings, store: DuckDBStore, window: str
) -> None:
    engine = Recording(Evaluator(store))
    with client_for(settings, store, engine) as c:
        body = c.get(f"/api/v1/fleet/overview?window={window}").json()
    texts = [ch["promql"] for ch in body["charts"]] + [q["promql"] for q in body["questions"]]
    queries: set[str] = set()  # each run of lines between comment lines is one query
    measured: set[str] = set()  # comment lines: how the interval was measured, and titles
    for text in texts:
        block: list[str] = []
        for line in [*text.splitlines(), "#"]:
            if line.startswith("#"):
                queries |= {"\n".join(block)} if block else set()
                block = []
                measured.add(line[2:])
            elif line:
                block.append(line)
    assert queries <= set(engine.queries)  # every query shown ran, character for character
    assert set(engine.queries) <= queries | measured  # and nothing else ran
    assert ov.PROMQL_INTERVAL in measured and body["interval_ms"] == 60_000
    for query in queries | {ov.PROMQL_INTERVAL}:
        parse(query)  # pasteable into Grafana as it stands


def test_the_pages_read_metrics_from_the_engine_they_are_given(
    settings: WebSettings, store: DuckDBStore
) -> None:
    """With ``backend = "prometheus"`` the local store holds no metrics; the engine has them."""
    local = DuckDBStore(":memory:")
    try:
        local.upsert_jobs(store.jobs(limit=None))
        with client_for(settings, local, Evaluator(store)) as c:
            assert c.get("/api/v1/fleet/usage").json() == pytest.approx(GPU_HOURS)
            body = c.get("/api/v1/fleet/overview?window=24h").json()
            page = c.get("/?window=24h")
        assert body["gpu_hours"] == pytest.approx(GPU_HOURS) and body["warnings"] == []
        assert body["states"]["busy"] == 1 and [r["id"] for r in body["pending"]] == ["p1"]
        assert page.status_code == 200 and "could not be computed" not in page.text
    finally:
        local.close()


def test_failed_queries_cost_only_their_numbers(settings: WebSettings, store: DuckDBStore) -> None:
    down = QueryError("unavailable", "cannot reach http://prometheus:9090/api/v1/query")
    engine = FakeEngine(
        instant_results={ov.PROMQL_TEAM_QUOTA: lambda t: QueryResult("vector")},
        range_results={ov.PROMQL_UTILIZATION: down},
    )
    with client_for(settings, store, engine) as c:
        body = c.get("/api/v1/fleet/overview?window=24h").json()
        page = c.get("/?window=24h")
        usage = c.get("/api/v1/fleet/usage")
    assert body["charts"][0]["has_data"] is False and body["team_quota"] == {}
    assert any(w.startswith("utilization: unavailable: cannot reach") for w in body["warnings"])
    assert any(w.startswith("GPU states: bad_data") for w in body["warnings"])
    assert not any(w.startswith("team quota") for w in body["warnings"])
    assert [r["id"] for r in body["running"]] == ["v1", "l1"]  # jobs come from the records
    assert page.status_code == 200 and "could not be computed" in page.text
    assert "cannot reach http://prometheus:9090" in page.text
    assert usage.status_code == 500 and "bad_data" in usage.json()["detail"]
    engine.instant_results[ov.PROMQL_INTERVAL] = down
    with client_for(settings, store, engine) as c:
        usage = c.get("/api/v1/fleet/usage")
    assert usage.status_code == 503 and "cannot reach" in usage.json()["detail"]


def test_partial_results_are_warnings(settings: WebSettings, store: DuckDBStore) -> None:
    class Partial(Recording):
        def instant(self, query: str, t_ms: int) -> QueryResult:
            result = super().instant(query, t_ms)
            if query == ov.PROMQL_TEAM_QUOTA:
                result.warnings.append("store node 3 did not answer")
            return result

    with client_for(settings, store, Partial(Evaluator(store))) as c:
        body = c.get("/api/v1/fleet/overview").json()
    assert body["warnings"] == [f"{ov.PROMQL_TEAM_QUOTA}: store node 3 did not answer"]
    assert body["team_quota"] == {"llm": 1.0, "vision": 2.0}
