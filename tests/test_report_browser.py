"""The report in a real browser: headless Chromium opens index.html from disk.

Needs selenium, Chromium and its driver (Debian: ``apt-get install chromium
chromium-driver``; ``pip install selenium``, in the ``test`` extra); skipped
with the reason when one is absent. Screenshots are written to the test's
temporary directory (printed; ``pytest -s`` shows where), or to
``$SFAM_TEST_ARTIFACTS`` when set.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

selenium = pytest.importorskip(
    "selenium", reason="selenium is not installed: pip install selenium"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip(
        "the browser test needs chromium and chromedriver on PATH "
        "(Debian: apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402
from test_report import Data  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--window-size=1400,1000", "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, script: str, seconds: float = 5.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SFAM_TEST_ARTIFACTS", tmp_path / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_report_opens_worst_first_and_hover_moves_the_overlay(browser, tmp_path):
    data = Data(tmp_path / "run", limit=4)
    shots = _artifacts(tmp_path)
    browser.get((tmp_path / "run" / "index.html").resolve().as_uri())
    # every picture of the page (thumbnails and plots) loads from disk: wait
    # until the browser has finished with each one, then none may be broken
    pictures = "Array.from(document.images).filter(i => i.className !== 'viewer-image')"
    _wait(browser, f"return {pictures}.every(i => i.complete)", seconds=20.0)
    assert browser.execute_script(f"return {pictures}.every(i => i.naturalWidth > 0)")
    # the worst query first: the highest first-true rank of a full sort
    ranks = {
        r["query"]: (data.true_ranks(r["query"]) or [(0, 0)])[0][0]
        for r in data.records
    }
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.query")
    first = int(rows[0].get_attribute("data-order"))
    assert ranks[first] == max(ranks.values())
    browser.save_screenshot(str(shots / "report.png"))
    # open the first pair: its data file is loaded then
    assert browser.execute_script("return typeof window.sfamPair") == "function"
    rows[0].find_element(By.CSS_SELECTOR, "button.pair-link").click()
    pair = _wait(browser, "return document.getElementById('viewer').dataset.loaded")
    assert pair == f"q{first:06d}-r01"
    query = browser.find_element(By.ID, "viewer-query")
    overlay = "return document.getElementById('viewer-neighbour-overlay').toDataURL()"
    before = browser.execute_script(overlay)
    ActionChains(browser).move_to_element_with_offset(query, -90, -90).perform()
    one = browser.execute_script(overlay)
    ActionChains(browser).move_to_element_with_offset(query, 90, 80).perform()
    two = browser.execute_script(overlay)
    assert before != one != two  # each hovered cell paints its own matches
    browser.save_screenshot(str(shots / "viewer-query-hover.png"))
    # and the other way round
    neighbour = browser.find_element(By.ID, "viewer-neighbour")
    ActionChains(browser).move_to_element_with_offset(neighbour, 20, -30).perform()
    came = browser.execute_script(
        "return document.getElementById('viewer-query-overlay').dataset.from"
    )
    assert came.startswith("neighbour:")
    browser.save_screenshot(str(shots / "viewer-neighbour-hover.png"))
    # sorting in the page: query order
    browser.find_element(By.ID, "viewer-close").click()
    Select(browser.find_element(By.ID, "sort")).select_by_value("order")
    order = [
        int(r.get_attribute("data-order"))
        for r in browser.find_elements(By.CSS_SELECTOR, "tr.query")
    ]
    assert order == sorted(order)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    print(f"screenshots: {shots}")
