"""The audit report's HTML page in a real browser: Debian's headless Chromium, driven through its chromedriver.

scripts/ensure_tools.sh (run by `make test`) installs both packages. Selenium gets the driver's path, so Selenium
Manager never runs (it would download a driver), and Chromium runs with its background networking off (otherwise
it keeps dialling Google's services on a network that has none).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.worker.report_factory import build_signed_report
from worker.reports.html import render_html

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1100,900",
]

# Every image of the page, once decoded: Image.decode() rejects for an image the browser could not load or decode.
IMAGES_SCRIPT = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
Promise.allSettled(images.map((image) => image.decode())).then((decoded) => done(images.map((image, i) => ({
  alt: image.alt, complete: image.complete, naturalWidth: image.naturalWidth, naturalHeight: image.naturalHeight,
  decoded: decoded[i].status === "fulfilled",
}))));
"""


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        assert binary.is_file(), f"{binary} is missing: run scripts/ensure_tools.sh as root (Debian's chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_report_renders_in_chromium_with_every_image_loaded(chromium: webdriver.Chrome, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_html(build_signed_report()), encoding="utf-8")

    chromium.get(page.as_uri())

    assert chromium.execute_script("return document.readyState") == "complete"
    assert chromium.title.startswith("Lethe audit report")
    assert chromium.find_element(By.TAG_NAME, "h1").text == "Lethe audit report"
    assert chromium.find_element(By.CSS_SELECTOR, ".verdict-word").text == "Verdict: shallow"
    images = chromium.execute_async_script(IMAGES_SCRIPT)
    assert len(images) == 6
    for image in images:
        assert image["complete"] and image["decoded"], image["alt"]
        assert (image["naturalWidth"], image["naturalHeight"]) == (640, 360), image["alt"]
    # The page asked for nothing beyond itself (data: images are no fetch).
    fetched = chromium.execute_script("return performance.getEntriesByType('resource').map((r) => r.name)")
    assert all(name.startswith("data:") for name in fetched), fetched

    # The whole page in one screenshot: the window as tall as the document.
    height = chromium.execute_script("return document.documentElement.scrollHeight")
    chromium.set_window_size(1100, height)
    screenshot = chromium.get_screenshot_as_png()
    (tmp_path / "report.png").write_bytes(screenshot)
    assert screenshot.startswith(PNG_SIGNATURE) and len(screenshot) > 50_000
