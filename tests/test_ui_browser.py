"""The web console in a real headless browser (Debian's chromium through /usr/bin/chromedriver) against a
real daemon process: a real Prometheus scraping that daemon feeds the chart, the Slack fake receives the
thread the console links to. One daemon and one browser serve the whole module.

Screenshots of every page land in tests/artifacts/ui/ (ignored by git); UPDATE_UI_SCREENSHOTS=1 also
refreshes the committed copies in docs/ui/ that docs/ui.md shows.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.alerts import am_alert, am_payload
from tests.support.live_daemon import SLACK_WORKSPACE, LiveDaemon, live_daemon
from tests.support.processes import REPO
from tests.support.services import require
from tests.support.vendors import grafana_payload

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    JavascriptException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
UI_TOKEN = "ui-token-for-the-browser-test"
ARTIFACTS = REPO / "tests" / "artifacts" / "ui"
DOCS_SHOTS = REPO / "docs" / "ui"
HOSTILE = '"><img src=x onerror="document.title=\'pwned\'"><script>document.title=\'pwned\'</script>'

RULES = {"rules": [{
    "name": "web-errors",
    "match": ['alertname="WebErrors"'],
    "collectors": [
        {"id": "scrapes", "type": "prometheus.range_query",
         "params": {"target": "main", "query": 'scrape_duration_seconds{job="test"}', "range": "2m",
                    "step": "1s"}},
        {"id": "health", "type": "http.check", "params": {"target": "self", "path": "/healthz"}},
    ],
    "mitigations": [
        {"id": "flush", "type": "http.request", "params": {"target": "self", "path": "/healthz", "method": "GET"}},
        {"id": "never", "type": "http.request", "params": {"target": "self", "path": "/readyz", "method": "GET"},
         "when": ["evidence.health.payload.status_code >= 500"]},
    ],
    "checklist": ["Check the service dashboard", "Tell the owning team"],
}]}

def alert(name: str, **fields: Any) -> dict[str, Any]:
    """One alert in its own Alertmanager group (group_by: [alertname]), so it opens an incident of its own."""
    return am_payload(am_alert(name, **fields), group_key=f'{{}}:{{alertname="{name}"}}')


def wait_processed(console: LiveDaemon, count: int, timeout: float = 30) -> None:
    """Until `count` incidents have their evidence and their Slack thread."""
    deadline = time.monotonic() + timeout
    while True:
        status, html = console.get("/ui/incidents", {"Authorization": f"Bearer {UI_TOKEN}"})
        rows = html.count('class="incident ')
        parents = len(console.slack.parents("#incidents"))
        if status == 200 and rows >= count and parents >= count:
            return
        assert time.monotonic() < deadline, f"{rows} incident(s), {parents} Slack thread(s)\n{console.process.output()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaemon]:
    with live_daemon(tmp_path_factory.mktemp("ui"), RULES, server={"ui_token": {"env": "RESPONDER_UI_TOKEN"}},
                     env={"RESPONDER_UI_TOKEN": UI_TOKEN}) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def incidents(console: LiveDaemon) -> dict[str, int]:
    """Real data: an incident with a chart, decisions and a Slack thread; a resolved one from Grafana; one
    whose labels and annotations are hostile markup. Returns incident ids by name."""
    # A few scrapes of the daemon first, so the range query has points to chart.
    console.post("/webhooks/alertmanager", alert("Warmup"))
    console.wait_scraped('count_over_time(scrape_duration_seconds{job="test"}[1m])', 3)
    # One Alertmanager group of two alerts: one incident with two members.
    console.post("/webhooks/alertmanager", am_payload(
        *(am_alert("WebErrors", labels={"job": "test", "instance": name}) for name in ("web-1", "web-2")),
        group_key='{}:{alertname="WebErrors"}'))
    console.post("/webhooks/grafana", grafana_payload("firing", pod="api-1"))
    console.post("/webhooks/grafana", grafana_payload("resolved", pod="api-1"))
    console.post("/webhooks/alertmanager", alert("Hostile", labels={"service": HOSTILE},
                                                 annotations={"summary": HOSTILE,
                                                              "runbook_url": "javascript:alert(1)"}))
    wait_processed(console, 4)
    status, html = console.get("/ui/incidents", {"Authorization": f"Bearer {UI_TOKEN}"})
    assert status == 200
    ids = {}
    for name in ("Warmup", "WebErrors", "HighCPU", "Hostile"):
        marker = f'">{name}</a>'
        before = html[: html.index(marker)]
        ids[name] = int(before[before.rindex('href="/ui/incidents/') + len('href="/ui/incidents/'):].split('"')[0])
    return ids


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        require("chromium", "install the Debian packages chromium and chromium-driver")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: WebDriver, name: str) -> Path:
    """The whole page, not only the window: the window is stretched to the document's height first."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1360, min(max(height, 600), 6000))
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1360, 900)
    if os.environ.get("UPDATE_UI_SCREENSHOTS"):
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_SHOTS / path.name)
    return path


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 15) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=[StaleElementReferenceException, JavascriptException]).until(condition)


def rows(driver: WebDriver) -> list[str]:
    """The listed alert names, read in one script call: the page may reload itself between two reads."""
    names: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#incidents tr.incident td.alertname'), td => td.innerText)")
    return names


def login(driver: WebDriver, console: LiveDaemon, token: str = UI_TOKEN) -> None:
    driver.get(console.url + "/ui/login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()


# ---- tests, in the order a person would meet the console ----------------------------------------------


def test_without_a_token_nothing_is_shown(console: LiveDaemon, incidents: dict[str, int], browser: WebDriver) -> None:
    for path in ("/ui/incidents", f"/ui/incidents/{incidents['WebErrors']}", "/ui/actions", "/ui/explain"):
        status, html = console.get(path)
        assert status == 401, path
        assert "WebErrors" not in html and "login-form" in html
        status, html = console.get(path, {"Authorization": "Bearer not-the-token"})
        assert status == 401 and "WebErrors" not in html
    assert console.get("/ui/evidence/1/chart.png")[0] == 401
    browser.get(console.url + "/")
    assert browser.current_url.endswith("/ui/incidents")
    assert browser.find_elements(By.ID, "login-form") and not browser.find_elements(By.ID, "incidents")
    login(browser, console, "a-wrong-token")
    assert "not valid" in browser.find_element(By.ID, "login-error").text
    assert not browser.get_cookies()
    screenshot(browser, "login")


def test_login_sets_a_strict_http_only_cookie_without_the_token(console: LiveDaemon, browser: WebDriver) -> None:
    login(browser, console)
    wait_for(browser, lambda d: d.find_elements(By.ID, "incidents"))
    (cookie,) = browser.get_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert UI_TOKEN not in cookie["value"]
    assert browser.execute_script("return document.cookie") == ""


def test_incidents_list_shows_every_incident_and_filters(console: LiveDaemon, incidents: dict[str, int],
                                                          browser: WebDriver) -> None:
    browser.get(console.url + "/ui/incidents")
    assert set(rows(browser)) >= {"WebErrors", "HighCPU", "Warmup"}
    assert browser.find_element(By.CSS_SELECTOR, f"tr[data-id='{incidents['WebErrors']}'] td.members").text == "2/2"
    screenshot(browser, "incidents")

    Select(browser.find_element(By.ID, "filter-status")).select_by_value("resolved")
    browser.find_element(By.ID, "apply-filters").click()
    wait_for(browser, lambda d: "status=resolved" in d.current_url)
    assert rows(browser) == ["HighCPU"]

    Select(browser.find_element(By.ID, "filter-status")).select_by_value("")
    Select(browser.find_element(By.ID, "filter-rule")).select_by_value("web-errors")
    browser.find_element(By.ID, "apply-filters").click()
    wait_for(browser, lambda d: "rule=web-errors" in d.current_url)
    assert rows(browser) == ["WebErrors"]

    Select(browser.find_element(By.ID, "filter-rule")).select_by_value("")
    Select(browser.find_element(By.ID, "filter-source")).select_by_value("grafana")
    browser.find_element(By.ID, "apply-filters").click()
    wait_for(browser, lambda d: "source=grafana" in d.current_url)
    assert rows(browser) == ["HighCPU"]


def test_incidents_list_refreshes_itself(console: LiveDaemon, incidents: dict[str, int], browser: WebDriver) -> None:
    browser.get(console.url + "/ui/incidents?refresh=2")
    assert "LateArrival" not in rows(browser)
    console.post("/webhooks/alertmanager", alert("LateArrival"))
    try:
        wait_for(browser, lambda d: "LateArrival" in rows(d), timeout=20)
    except TimeoutException:
        pytest.fail(f"the list did not refresh itself: {rows(browser)}")


def test_incident_page_shows_evidence_chart_decisions_checklist_timeline_and_slack(
        console: LiveDaemon, incidents: dict[str, int], browser: WebDriver) -> None:
    browser.get(f"{console.url}/ui/incidents/{incidents['WebErrors']}")
    assert browser.find_element(By.ID, "incident-rule").text == "web-errors"
    members = browser.find_elements(By.CSS_SELECTOR, "#members tr.member")
    assert sorted(m.find_element(By.CSS_SELECTOR, "td.labels").text for m in members) == [
        "instance=web-1", "instance=web-2"]
    assert "2 of 2 member(s) firing" in browser.find_element(By.ID, "group").text
    chart = browser.find_element(By.CSS_SELECTOR, "article[data-step=scrapes] img.chart")
    wait_for(browser, lambda d: d.execute_script("return arguments[0].complete", chart))
    assert browser.execute_script("return arguments[0].naturalWidth", chart) > 0
    health = browser.find_element(By.CSS_SELECTOR, "article[data-step=health]").text
    assert "ok" in health
    decisions = browser.find_element(By.ID, "decisions").text
    assert "flush" in decisions and "dry-run" in decisions
    assert "never" in decisions and "skipped" in decisions and "evidence.health.payload.status_code" in decisions
    checklist = browser.find_element(By.ID, "checklist-1").text
    assert "Tell the owning team" in checklist
    timeline = browser.find_element(By.ID, "timeline").text
    assert "opened" in timeline and "processed: matched web-errors" in timeline and "sink:slack" in timeline
    link = browser.find_element(By.ID, "slack-link").get_attribute("href") or ""
    (parent,) = [m for m in console.slack.parents("#incidents") if "WebErrors" in m.text]
    assert link == f"{SLACK_WORKSPACE}/archives/{console.slack.channel_id('#incidents')}/p{parent.ts.replace('.', '')}"
    screenshot(browser, "incident")


def test_hostile_labels_render_as_text(console: LiveDaemon, incidents: dict[str, int], browser: WebDriver) -> None:
    for path in ("/ui/incidents", f"/ui/incidents/{incidents['Hostile']}"):
        browser.get(console.url + path)
        assert browser.title != "pwned"
        assert not browser.find_elements(By.CSS_SELECTOR, "main img[src=x], main script")
        assert HOSTILE in browser.find_element(By.TAG_NAME, "main").text
    assert not [a for a in browser.find_elements(By.TAG_NAME, "a")
                if (a.get_attribute("href") or "").startswith("javascript:")]
    screenshot(browser, "hostile")


def test_actions_audit_filters_by_outcome(console: LiveDaemon, incidents: dict[str, int], browser: WebDriver) -> None:
    browser.get(console.url + "/ui/actions")
    table = browser.find_element(By.ID, "actions").text
    assert "flush" in table and "never" in table
    screenshot(browser, "actions")
    Select(browser.find_element(By.ID, "filter-outcome")).select_by_value("skipped")
    browser.find_element(By.ID, "apply-filters").click()
    wait_for(browser, lambda d: "outcome=skipped" in d.current_url)
    table = browser.find_element(By.ID, "actions").text
    assert "never" in table and "flush" not in table


def test_explain_shows_the_matching_rule_and_the_guards(console: LiveDaemon, browser: WebDriver) -> None:
    browser.get(console.url + "/ui/explain")
    payload = json.dumps(alert("WebErrors", labels={"job": "test"}), indent=2)
    box = browser.find_element(By.ID, "explain-payload")
    browser.execute_script("arguments[0].value = arguments[1]", box, payload)
    browser.find_element(By.ID, "explain-submit").click()
    result = wait_for(browser, lambda d: d.find_elements(By.ID, "explain-result"))[0].text
    assert "✓ web-errors matches" in result
    # The guards read the real store: `flush` ran (dry-run) for the incident above, so its cooldown holds.
    assert "flush" in result and "blocked by cooldown" in result
    assert "http.self" in result
    assert "when evidence.health.payload.status_code >= 500: depends on the evidence" in result
    screenshot(browser, "explain")

    browser.execute_script("arguments[0].value = '{not json'", browser.find_element(By.ID, "explain-payload"))
    browser.find_element(By.ID, "explain-submit").click()
    assert wait_for(browser, lambda d: d.find_elements(By.ID, "explain-error"))


def test_logging_out_ends_the_session(console: LiveDaemon, browser: WebDriver) -> None:
    browser.get(console.url + "/ui/incidents")
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "login-form"))
    browser.get(console.url + "/ui/incidents")
    assert browser.find_elements(By.ID, "login-form") and not browser.find_elements(By.ID, "incidents")
