"""The dashboard and the docs page: served offline, and working in a real headless Chromium; and
what only a real server shows (a client leaving a stream early).

The browser test starts uvicorn on a free loopback port in a thread, opens the dashboard in
Debian's chromium (driven by Playwright's Python package, never a downloaded browser), submits a
prompt and waits for the streamed steps and the live telemetry to appear. Any request that leaves
127.0.0.1 is blocked and fails the test: the page must work offline.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from fastapi.testclient import TestClient

from dualpath.cli.generate import fallback_note, step_ms
from dualpath.service import DualPathService, create_app
from dualpath.service.app import STATIC_DIR
from live_server import serving
from test_service import service_config, slow_generator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PROMPT = "The Moon is Earth's only natural satellite. It orbits the planet at an average distance of 384,400 km."
KEY = "dashboard-key"
DECISION_LABELS = {"SNAP", "BLEND", "NOVEL", "DUP_DROP"}
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # an XML namespace name, never fetched


@pytest.fixture(scope="module")
def service(trained_bank_path, text_encoder):
    svc = DualPathService.load(trained_bank_path, service_config(), encoder=text_encoder)
    yield svc
    svc.close()


class References(HTMLParser):
    """Every src/href a page refers to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", ["/", "/docs"])
def test_pages_refer_only_to_assets_the_app_serves(service, page):
    with TestClient(create_app(service)) as client:
        response = client.get(page)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
        urls = [u for u in references(response.text) if not u.startswith("data:")]
        assert urls, "the page loads no assets?"
        for url in urls:
            assert url.startswith("/"), f"{page} refers to {url}"
            assert client.get(url).status_code == 200, url
        # Swagger UI's own page script (inline) must not pull anything from a CDN either.
        assert "cdn" not in response.text.lower()


def test_shipped_assets_name_no_remote_url():
    files = sorted(STATIC_DIR.iterdir())
    assert {f.name for f in files} >= {"index.html", "dashboard.js", "dashboard.css"}
    for path in files:
        text = path.read_text(encoding="utf-8").replace(SVG_NAMESPACE, "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), path.name


# -- a real browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (scripts/test-deps.sh installs it; `make test` runs that)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextmanager
def offline_page(browser, refused: tuple[int, ...] = (), **context_options) -> Iterator:
    """A page whose requests beyond 127.0.0.1 are blocked. On exit it asserts there were none, no
    script errors, and no answer ≥ 400 other than the `refused` statuses, each seen once."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, **context_options)
    page = context.new_page()
    remote: list[str] = []
    errors: list[str] = []
    failed: list[int] = []

    def guard(route) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            remote.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("response", lambda response: failed.append(response.status) if response.status >= 400 else None)
    try:
        yield page
    finally:
        context.close()
    assert remote == [], f"the page tried to reach {remote}"
    assert errors == [], f"errors in the page: {errors}"
    assert sorted(failed) == sorted(refused), f"unexpected answers: {failed}"


def test_dashboard_streams_a_generation_and_shows_live_telemetry(service, browser):
    with serving(service) as url, offline_page(browser) as page:
        page.goto(url + "/")
        page.wait_for_selector("#lane option[value='creative']", state="attached")
        assert "concepts" in page.text_content("#bank-info")

        page.fill("#prompt", PROMPT)
        page.select_option("#lane", "creative")
        page.fill("#steps", "4")
        page.click("#run")
        page.wait_for_function("document.querySelectorAll('#stream-table tbody tr').length === 4")
        page.wait_for_function("!document.querySelector('#run').disabled")

        rows = page.query_selector_all("#stream-table tbody tr")
        for number, row in enumerate(rows):
            cells = [c.text_content() for c in row.query_selector_all("td")]
            assert cells[0] == str(number)
            assert cells[1] in DECISION_LABELS
            assert cells[2] == "–" or 0.0 <= float(cells[2]) <= 1.0
            assert 0.0 <= float(cells[3]) <= 1.0  # p, the SNAP confidence of the step's candidate
            assert cells[4] in ("tower", "lvm", "successor")  # where the candidate came from
            assert cells[6].strip()  # the step's text
            assert float(cells[7]) >= 0  # the step's own ms
        # The first step's ms is its own; the prompt's encoding, which its total carries, is named apart.
        assert "encoded in" in rows[0].query_selector("td:nth-child(8)").get_attribute("title")
        for latency in ({"total": 30.0, "encode": 27.5}, {"total": 2.5}):
            assert page.evaluate("(l) => stepMs(l)", latency) == step_ms(latency)
        assert page.text_content("#stream-text").strip()
        assert page.is_hidden("#run-error")
        # What the bank holds of the prompt: each sentence beside its nearest concept, as match_prompt says.
        shown = [[c.text_content() for c in r.query_selector_all("td")]
                 for r in page.query_selector_all("#prompt-matches tbody tr")]
        assert shown == [[m.sentence, m.text, f"{m.cosine:.2f}", "said" if m.said else ""]
                         for m in service.generator.match_prompt(PROMPT)]
        assert page.is_visible("#prompt-matches")
        # A step without a candidate says why in the page's words and the CLI's alike.
        for reason, used, said in (("empty", 1, 2), ("empty", 0, 1), ("empty", 0, 0), ("timeout", 0, 0)):
            record = {"fallback_reason": reason, "skipped_used": used, "skipped_paraphrases": said}
            assert page.evaluate("(r) => fallbackNote(r)", record) == fallback_note(reason, used, said)

        # The telemetry panels catch up on their next poll.
        page.wait_for_function("document.querySelectorAll('#recent-table tbody tr').length >= 4")
        recent = [r.text_content() for r in page.query_selector_all("#recent-table tbody tr td:nth-child(2)")]
        assert recent[:4] == ["creative"] * 4
        assert page.locator("#mix-chart rect").count() >= 1
        assert page.locator("#hist-chart rect").count() >= 1
        # Creative's levels are probabilities, not cosines: no band on the c_max axis. A quota lane's is drawn.
        assert "creative" not in page.text_content("#hist-chart")
        page.select_option("#lane", "quota-neutral")
        page.fill("#steps", "2")
        page.click("#run")
        page.wait_for_function("document.querySelectorAll('#stream-table tbody tr').length === 2")
        page.wait_for_function("document.querySelector('#hist-chart').textContent.includes('quota-neutral')")


def test_dashboard_shows_a_refused_request(service, browser):
    with serving(service) as url, offline_page(browser, refused=(422,)) as page:
        page.goto(url + "/")
        page.wait_for_selector("#lane option", state="attached")
        # Past the service's limit: the box enforces it too, so lift the box's own limit first.
        page.evaluate("document.querySelector('#prompt').removeAttribute('maxlength')")
        page.fill("#prompt", "x" * (service.cfg.service.max_prompt_chars + 1))
        page.click("#run")
        page.wait_for_selector("#run-error:not([hidden])")
        assert "limit is" in page.text_content("#run-error")


def test_docs_render_offline(service, browser):
    with serving(service) as url, offline_page(browser) as page:
        page.goto(url + "/docs")
        page.wait_for_selector(".opblock")
        operations = {el.text_content() for el in page.query_selector_all(".opblock-summary-path")}
        assert {"/search", "/generate", "/generate/stream", "/telemetry", "/metrics"} <= operations


def test_dashboard_behind_an_api_key_in_a_browser(service, browser):
    keyed = DualPathService(service.generator, service_config(api_key=KEY))
    with serving(keyed) as url:
        with offline_page(browser, http_credentials={"username": "me", "password": KEY}) as page:
            page.goto(url + "/")
            page.wait_for_function("document.querySelector('#bank-info').textContent.includes('concepts')")
            page.wait_for_selector("#status.live")
        # Without the key the browser is challenged (Basic) and, headless, can only give up.
        from playwright.sync_api import Error as PlaywrightError

        context = browser.new_context()
        try:
            with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                context.new_page().goto(url + "/")
        finally:
            context.close()


# -- a real server without a browser ------------------------------------------------------------------


def test_a_stream_left_early_stops_computing(service):
    """A 64-step stream (50 ms a step) that the client leaves after its first step stops at once:
    no more steps are recorded, and the request is no longer in flight."""
    slow = DualPathService(slow_generator(service.generator), service_config(generation_workers=1))
    with serving(slow) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/generate/stream", json={"prompt": PROMPT, "steps": 64}) as stream:
            lines = stream.iter_lines()
            assert next(lines) == "event: start"
            while next(lines) != "event: step":
                pass
        time.sleep(0.3)  # the server notices the disconnect; the step being computed may finish
        recorded = slow.telemetry(0)["recorded"]
        time.sleep(0.5)  # ten more steps' time, were it still going
        assert slow.telemetry(0)["recorded"] == recorded < 10
        in_flight = [line for line in client.get("/metrics").text.splitlines()
                     if line.startswith("dualpath_http_requests_in_flight ")]
        assert in_flight == ["dualpath_http_requests_in_flight 1.0"]  # the /metrics request itself
        assert client.post("/generate", json={"prompt": PROMPT, "steps": 1}).status_code == 200
