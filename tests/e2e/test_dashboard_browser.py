"""The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by Selenium; installed with apt-get by the fixture below when missing).

`CRM_SYNC_SCREENSHOT=docs/dashboard.png` also saves the screenshot shown in the README.
"""

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_pair import live_pair
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
KEY = "dashboard-test-key"


def _install_chromium() -> None:
    """Debian's packages (the machines run as root); no browser download of its own."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, timeout=600)
        subprocess.run(install, env=env, check=True, capture_output=True, timeout=900)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    if not (CHROMIUM.exists() and DRIVER.exists()):
        _install_chromium()
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,760",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _dead_request(service_url: str, crm_url: str) -> int:
    """A customer whose CREATE the CRM refused for good; returns its request's id."""
    headers = {"X-API-Key": KEY}
    faults = httpx.put(f"{crm_url}/api/crm/_faults", json={"down": True, "statusCode": 422})
    assert faults.is_success
    body = {"firstName": "Grace", "lastName": "Hopper", "email": "grace@example.com"}
    assert httpx.post(f"{service_url}/api/customers", json=body, headers=headers).is_success
    deadline = time.monotonic() + 15
    while True:
        page = httpx.get(
            f"{service_url}/api/failed-requests", params={"status": "dead"}, headers=headers
        ).json()
        if page["items"]:
            request_id: int = page["items"][0]["id"]
            break
        assert time.monotonic() < deadline, "the request never became dead"
        time.sleep(0.05)
    assert httpx.put(f"{crm_url}/api/crm/_faults", json={"down": False}).is_success
    return request_id


def test_replay_from_the_dashboard_delivers_a_dead_request(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    with live_pair(tmp_path, API_KEY=KEY) as pair:
        request_id = _dead_request(pair.service_url, pair.crm_url)
        reconciled = httpx.post(
            f"{pair.service_url}/api/reconciliation", headers={"X-API-Key": KEY}
        ).json()
        assert reconciled["skipped"] == 1  # the dead request's customer is not drift
        wait = WebDriverWait(browser, 20, poll_frequency=0.1)

        browser.get(f"{pair.service_url}/dashboard")
        assert browser.find_element(By.NAME, "key")  # the key is asked for first
        browser.get(f"{pair.service_url}/dashboard?key={KEY}")
        row = wait.until(
            expected_conditions.presence_of_element_located((By.ID, f"request-{request_id}"))
        )
        assert row.get_attribute("data-status") == "dead"
        assert "CRM answered 422" in row.text
        assert browser.find_element(By.ID, "count-dead").text == "1"
        assert "1 customers checked" in browser.find_element(By.ID, "reconciliation").text

        screenshot = os.environ.get("CRM_SYNC_SCREENSHOT")
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
        if screenshot:
            shutil.copy(tmp_path / "dashboard.png", screenshot)

        row.find_element(By.CSS_SELECTOR, "button[name=replay]").click()
        # The page comes back with a notice; the delivery lands in the background, and
        # the page's own refresh shows it gone.
        wait.until(expected_conditions.presence_of_element_located((By.ID, "no-requests")))
        assert "replayed" in browser.find_element(By.ID, "notice").text
        assert browser.find_element(By.ID, "count-dead").text == "0"
        records = httpx.get(f"{pair.crm_url}/api/crm/customers").json()["items"]
        assert [r["email"] for r in records] == ["grace@example.com"]
