"""The audit report's HTML page in a real browser: Debian's headless Chromium (the `chromium` fixture)."""

from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.e2e.conftest import IMAGES_SCRIPT, PNG_SIGNATURE
from tests.worker.report_factory import build_signed_report
from worker.reports.html import render_html


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
