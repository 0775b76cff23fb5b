"""The dashboard (``GET /``, design.md "Learning curves and the live view") and the route it
reads a model's normalization health from. The page is driven in a real headless Chromium
(Debian's ``chromium`` + ``chromium-driver``, through selenium) against a real uvicorn process:
it must list a race's members, draw their curves, grow as learns arrive over HTTP (the live
feeds, read with ``fetch`` so they can carry a key), and never request anything off this
machine (Chrome's performance log lists every request the page made)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient

from service.redis.keys import race_key

from . import test_processes
from .test_processes import Server

SPEC = {"task": "regression", "n_features": 2, "cell": "lstm", "hidden_size": 4, "window": 3,
        "seed": 1}
NORMS = ("streaming", "online", "layer")
MISSING = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
# CI must run it (.ci/run sets STREAMNORM_REQUIRE_BROWSER=1): there a missing browser fails
browser_test = pytest.mark.skipif(
    bool(MISSING) and not os.environ.get("STREAMNORM_REQUIRE_BROWSER"),
    reason=f"{' and '.join(MISSING)} not installed (apt-get install chromium chromium-driver; "
           "scripts/test.sh does it when it can)")


def event(i: int) -> dict[str, Any]:
    x = [((i * 7) % 11) / 11, ((i * 3) % 5) / 5 - 0.5]
    return {"stream": "s", "x": x, "y": x[0] - 2 * x[1], "event_id": f"dash-{i}"}


@pytest.fixture
def race(redis_url: str) -> Iterator[str]:
    """A fresh race name; the race's keys and its members' go afterwards."""
    name = f"d-{uuid.uuid4().hex[:10]}"
    yield name
    r = redis.Redis.from_url(redis_url)
    found = [*r.scan_iter(match=f"sn:{{{name}*", count=1000), race_key(name)]
    r.delete(*found)


# -- the routes (no browser) -----------------------------------------------------------------
def test_the_page_and_its_files_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("dashboard.js", "views.js", "chart.js", "feed.js", "dashboard.css"):
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200 and r.content, asset
        assert r.headers["content-type"].startswith(
            "text/css" if asset.endswith(".css") else "text/javascript")
    for text in (page.text, client.get("/static/dashboard.css").text):
        assert "http://" not in text and "https://" not in text  # nothing off this machine
    r = client.get("/static/dashboard.html.bak")
    assert r.status_code == 404 and r.json()["field"] == "file"
    assert "/" not in client.get("/openapi.json").json()["paths"]  # HTML: not in the schema


def test_norm_state_summarizes_the_models_statistics(client: TestClient, name: str) -> None:
    assert client.post("/models", json={"name": name, **SPEC}).status_code == 201
    for i in range(3):
        assert client.post(f"/models/{name}/learn", json=event(i)).status_code == 200
    got = client.get(f"/models/{name}/norm-state").json()
    assert got["version"] == 3 and got["norm"]["method"] == "streaming"
    rows = {b["name"]: b for b in got["buffers"]}
    long_term = rows["stack.layers.0.nx.L"]  # (m1, m2) of 4 gates x 4 units
    assert long_term["shape"] == [2, 16] and long_term["finite"] is True
    assert long_term["min"] <= long_term["mean"] <= long_term["max"]
    assert client.get("/models/nobody-here/norm-state").status_code == 404
    r = client.get("/models/bad name!/norm-state")
    assert r.status_code == 422 and r.json()["field"] == "name"


# -- the page in a browser -------------------------------------------------------------------
def chrome() -> Any:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium: the dev extra")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def until(driver: Any, check: Any, timeout: float = 30.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: check(d))


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def texts(driver: Any, selector: str, attribute: str | None = None) -> list[str]:
    """The text (or an attribute) of every element ``selector`` finds, read in one script: the
    page redraws rows as points arrive, so elements held across calls may go stale."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map(e => arguments[1] === null ? e.textContent : e.getAttribute(arguments[1]))",
        selector, attribute))


def click(driver: Any, selector: str) -> None:
    until(driver, lambda d: d.execute_script(
        "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e",
        selector))


def points_drawn(driver: Any, chart: str) -> int:
    found = css(driver, f"#{chart} svg")
    return int(found[0].get_attribute("data-points") or 0) if found else 0


def performance(driver: Any) -> list[dict[str, Any]]:
    """Every request the page made (``Network.requestWillBeSent`` of Chrome's DevTools), since
    the last call."""
    out = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            out.append(message["params"])
    return out


def requested_urls(driver: Any) -> list[str]:
    return [sent["request"]["url"] for sent in performance(driver)]


@browser_test
def test_the_dashboard_follows_a_race_live_and_stays_on_this_machine(
        redis_url: str, race: str) -> None:
    server = Server(redis_url, STREAMNORM_CURVE_EVERY="2")
    http = httpx.Client(base_url=server.url, timeout=30)
    driver = None
    try:
        body = {"name": race, "spec": SPEC, "members": [{"norm": n} for n in NORMS],
                "min_updates": 4}
        assert http.post("/races", json=body).status_code == 201
        members = [f"{race}.{n}" for n in NORMS]
        for i in range(10):  # 5 points per member before the page opens
            assert http.post(f"/races/{race}/learn", json=event(i)).status_code == 200
        leader = http.get(f"/races/{race}").json()["leader"]
        assert leader in members
        driver = chrome()
        driver.get(server.url + "/")
        click(driver, f'a.race[data-name="{race}"]')
        until(driver, lambda d: sorted(texts(d, "#race-rows tr", "data-member")) == sorted(members))
        until(driver, lambda d: points_drawn(d, "race-chart") == 15)  # the history
        lines = dict(zip(texts(driver, "#race-chart path.series", "data-key"),
                         texts(driver, "#race-chart path.series", "data-points"), strict=True))
        assert lines == {m: "5" for m in members}
        widths = dict(zip(texts(driver, "#race-chart path.series", "data-key"),
                          map(float, texts(driver, "#race-chart path.series", "stroke-width")),
                          strict=True))
        assert widths[leader] > max(w for k, w in widths.items() if k != leader)  # marked
        assert texts(driver, "#race-rows tr.leader", "data-member") == [leader]
        assert texts(driver, "#race-rows td.updates") == ["10"] * 3

        for i in range(10, 20):  # the live feed brings what happens now
            assert http.post(f"/races/{race}/learn", json=event(i)).status_code == 200
        until(driver, lambda d: points_drawn(d, "race-chart") == 30)
        until(driver, lambda d: texts(d, "#race-rows td.updates") == ["20"] * 3)

        # a member's own view: its curve, counters and normalization health, live too
        click(driver, f'#race-rows tr[data-member="{race}.streaming"]')
        until(driver, lambda d: texts(d, "#t-updates") == ["20"])
        until(driver, lambda d: texts(d, '#health tr[data-buffer="stack.layers.0.nx.L"]'))
        # Streaming Norm: L, S, GL, GS and the counters of 3 sites
        assert texts(driver, "#health .health-sum") == ["all 15 buffers finite"]
        before = points_drawn(driver, "loss-chart")
        for i in range(20, 24):
            assert http.post(f"/models/{race}.streaming/learn",
                             json=event(i)).status_code == 200
        until(driver, lambda d: texts(d, "#t-updates") == ["24"])
        until(driver, lambda d: points_drawn(d, "loss-chart") > before)
        assert texts(driver, "#t-rejected") == ["0"]

        urls = requested_urls(driver)
        assert any(u.endswith("/static/chart.js") for u in urls), urls  # the log holds all
        assert any(u.endswith(f"/races/{race}/live") for u in urls), urls
        assert any(u.endswith(f"/models/{race}.streaming/live") for u in urls), urls
        off = [u for u in urls if not u.startswith(("http://127.0.0.1:", "data:", "blob:"))]
        assert off == [], off
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        if driver is not None:
            driver.quit()
        http.close()
        server.kill()


@browser_test
def test_with_keys_the_page_asks_for_one_and_sends_it_on_reads_and_feeds(
        redis_url: str, name: str) -> None:
    server = Server(redis_url, STREAMNORM_CURVE_EVERY="2", STREAMNORM_API_KEYS="dash-admin",
                    STREAMNORM_READ_KEYS="dash-reader")
    admin = httpx.Client(base_url=server.url, timeout=30,
                         headers={"Authorization": "Bearer dash-admin"})
    driver = None
    try:
        assert admin.post("/models", json={"name": name, **SPEC}).status_code == 201
        driver = chrome()
        driver.get(server.url + "/")  # the page itself needs no key
        banner = until(driver, lambda d: [b for b in css(d, "#banner") if b.is_displayed()])[0]
        assert "API key" in banner.text and "401" in banner.text
        from selenium.webdriver.common.keys import Keys

        css(driver, "#api-key")[0].send_keys("dash-reader", Keys.ENTER)
        click(driver, f'a.model[data-name="{name}"]')
        until(driver, lambda d: texts(d, "#t-updates") == ["0"])
        for i in range(4):
            assert admin.post(f"/models/{name}/learn", json=event(i)).status_code == 200
        until(driver, lambda d: texts(d, "#t-updates") == ["4"])  # through the feed
        assert points_drawn(driver, "loss-chart") > 0
        assert not css(driver, "#banner")[0].is_displayed()
        assert driver.execute_script(
            "return sessionStorage.getItem('streamnorm.apiKey')") == "dash-reader"
    finally:
        if driver is not None:
            driver.quit()
        admin.close()
        server.kill()


@browser_test
def test_a_dropped_feed_resumes_with_last_event_id_and_misses_nothing(
        redis_url: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page's own SSE reader (fetch, not EventSource): when its server goes away it
    reconnects, sends the last id it saw, and gets exactly the points made meanwhile."""
    every = {"STREAMNORM_CURVE_EVERY": "2"}
    first, other = Server(redis_url, **every), Server(redis_url, **every)
    again: Server | None = None
    driver = None
    try:
        assert httpx.post(f"{first.url}/models", json={"name": name, **SPEC}).status_code == 201
        for i in range(4):
            assert httpx.post(f"{first.url}/models/{name}/learn", json=event(i)).status_code \
                == 200
        driver = chrome()
        driver.get(f"{first.url}/#/model/{name}")
        until(driver, lambda d: points_drawn(d, "loss-chart") == 4)  # 2 points, 2 lines
        until(driver, lambda d: texts(d, "#conn", "data-state") == ["live"])
        first.kill()
        until(driver, lambda d: texts(d, "#conn", "data-state") != ["live"])
        for i in range(4, 8):  # while the page is cut off, through another process
            assert httpx.post(f"{other.url}/models/{name}/learn", json=event(i)).status_code \
                == 200
        monkeypatch.setattr(test_processes, "free_port", lambda: first.port)
        again = Server(redis_url, **every)  # the page's server is back, on its port
        until(driver, lambda d: points_drawn(d, "loss-chart") == 8)  # versions 6 and 8, once
        until(driver, lambda d: texts(d, "#conn", "data-state") == ["live"])
        assert texts(driver, "#t-updates") == ["8"]
        resumed = [e for e in performance(driver) if e["request"]["url"].endswith(
            f"/models/{name}/live") and "Last-Event-ID" in e["request"]["headers"]]
        assert resumed and resumed[-1]["request"]["headers"]["Last-Event-ID"] == "4"
    finally:
        if driver is not None:
            driver.quit()
        for server in (first, other, again):
            if server is not None:
                server.kill()
