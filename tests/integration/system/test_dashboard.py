"""The dashboard end to end: the embedded stack with its dashboard process, the demo feed over
MLLP, and headless Chromium (Debian's chromium and chromedriver, installed by `make test`)
logging in and reading live numbers, a dead letter and an alert off the rendered pages.

The Overview screenshot goes to pytest's temporary folder; with CLINSTREAM_DOCS_SCREENSHOT=1
(`make screenshot`) it replaces docs/dashboard.png, the README's picture.
"""

import asyncio
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from clinstream.demo import demo_messages
from connectors.mllp_client import MllpClient
from dashboard.auth import hash_password
from kernel.events import Alert
from tests.integration.support import collect

REPO = Path(__file__).resolve().parents[3]
RECORDS = "clinstream_stage_records_total"
PASSWORD = "dashboard-e2e-password"


@pytest.fixture
async def stack(start_stack):
    async with start_stack(
        http={"api_token": "dashboard-e2e-token"},
        milvus={"collection": "dash"},
        cds={"stale_after_h": 24 * 365 * 50},  # the demo feed is from March 2025
        dashboard={
            "enabled": True,
            "port": 0,
            "sample_s": 1.0,
            "users": [f"ops:integration:{hash_password(PASSWORD, iterations=1000)}"],
        },
    ) as s:
        yield s


def _browser():
    driver_path = shutil.which("chromedriver")
    assert driver_path, "chromedriver missing: `make test` installs Debian's chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1300"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


def _count(name, stage=None):
    """This process's ``name`` counter, summed over its labels (or for one stage)."""
    return sum(
        s.value
        for metric in REGISTRY.collect()
        for s in metric.samples
        if s.name == name and (stage is None or s.labels.get("stage") == stage)
    )


def _body(driver):
    return driver.find_element(By.TAG_NAME, "body").text


def _wait_text(driver, predicate, timeout=60):
    try:
        WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: predicate(_body(d)))
    except TimeoutException:
        pytest.fail(f"the page never showed what was expected; it shows:\n{_body(driver)[:3000]}")
    return _body(driver)


def _click_text(driver, xpath_text, scope="//"):
    element = driver.find_element(By.XPATH, f"{scope}*[normalize-space(text())='{xpath_text}']")
    driver.execute_script("arguments[0].click();", element)


def _metrics(driver):
    """Every st.metric on the page: label → value."""
    out = {}
    for element in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stMetric']"):
        lines = element.text.splitlines()
        if len(lines) >= 2:
            out[lines[0]] = lines[1]
    return out


async def test_dashboard_shows_live_numbers_a_dead_letter_and_an_alert(stack, topics, tmp_path):
    assert stack.dashboard_url is not None
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{stack.dashboard_url}/_stcore/health")).status_code == 200

    # The counters belong to this process: tests that ran in it before count too.
    before = {"mllp": _count("clinstream_mllp_messages_total"), "normalizer": _count(RECORDS, "normalizer")}
    messages = demo_messages()
    async with MllpClient("127.0.0.1", stack.mllp_port) as client:
        codes = [(await client.send(m)).code for m in messages]
    # One malformed message is refused at the edge; another converts with a data-quality issue.
    assert codes.count("AA") == len(messages) - 1
    records = await collect(stack.bootstrap, topics.alerts, lambda seen: len(seen) >= 1, timeout=60)
    alerts = [Alert.model_validate_json(r.value) for r in records]

    # The stack serves from this event loop: the browser runs in a thread so the loop keeps answering.
    await asyncio.to_thread(_browse, stack.dashboard_url, len(messages), before, alerts[0], tmp_path)


def _browse(url, sent, before, first, tmp_path):
    driver = _browser()
    try:
        driver.get(url)
        WebDriverWait(driver, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "input[aria-label='User']")
        )
        driver.find_element(By.CSS_SELECTOR, "input[aria-label='User']").send_keys("ops")
        driver.find_element(By.CSS_SELECTOR, "input[aria-label='Password']").send_keys(PASSWORD)
        _click_text(driver, "Log in")

        # Overview: the sampler (1 s) catches up with every message the stack answered.
        WebDriverWait(driver, 90, poll_frequency=0.5).until(
            lambda d: _metrics(d).get("Received (MLLP)") == f"{before['mllp'] + sent:.0f}"
        )
        shown = _metrics(driver)
        assert "ops (integration)" in _body(driver)
        assert int(shown["Alerts raised"]) >= 1
        assert int(shown["Dead letters"]) >= 1
        assert int(shown["Normalized"]) >= before["normalizer"] + sent - 1
        # Streamlit renders the page top down on each rerun: wait for its lower sections, then
        # check them (the table is a canvas grid, its cells not in the page text; its caption says
        # issues were counted).
        overview = _wait_text(driver, lambda text: "Messages that converted despite these problems" in text)
        assert "Data-quality issues by sender" in overview
        time.sleep(3)  # a few more samples for the charts
        shot = tmp_path / "dashboard.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        if os.environ.get("CLINSTREAM_DOCS_SCREENSHOT") == "1":
            shutil.copyfile(shot, REPO / "docs" / "dashboard.png")

        _click_text(driver, "Dead letters", "//section[@data-testid='stSidebar']//")
        text = _wait_text(driver, lambda t: "1 of 1 dead letters" in t and "Show identifiers" in t)
        assert "Hl7ParseError at MSH-2 (connectors.mllp)" in text
        # The opened letter's message, masked by default: MSH and structure kept, PID's name and MRN not.
        payload = "\n".join(c.get_attribute("textContent") for c in driver.find_elements(By.TAG_NAME, "code"))
        assert "LAB99999" in payload
        assert "PID|1||***||***||***" in payload
        assert "PARK" not in payload
        assert "100003" not in payload

        _click_text(driver, "Alerts", "//section[@data-testid='stSidebar']//")
        text = _wait_text(driver, lambda t: "Latest alerts" in t)
        assert first.summary in text
        assert f"{first.rule_id} v{first.rule_version}" in text
    finally:
        driver.quit()
