"""The audit report's HTML page in a real browser: Debian's headless Chromium (the `chromium` fixture)."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By

from api.routes.audits import REPORT_CSP
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


def test_report_renders_under_the_report_routes_content_security_policy(chromium: webdriver.Chrome) -> None:
    """Served with the headers of GET /v1/audits/{id}/report.html: the page renders whole (its inline CSS, every
    data: plot), while what it did not bring itself is refused (a script, an image from a URL)."""
    page = render_html(build_signed_report())
    injected = '<img id="remote" src="/remote.png" alt="remote"><script>document.title = "script ran";</script>'
    pages = {"/report.html": page, "/injected.html": page.replace("</body>", f"{injected}</body>")}
    requested: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            requested.append(self.path)
            body = pages.get(self.path, "").encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Security-Policy", REPORT_CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        chromium.get(f"{base}/report.html")
        assert chromium.title.startswith("Lethe audit report")
        images = chromium.execute_async_script(IMAGES_SCRIPT)
        assert len(images) == 6 and all(image["decoded"] for image in images), images
        # The inline stylesheet applied (report.css: `main { max-width: 1000px }`).
        assert chromium.execute_script("return getComputedStyle(document.querySelector('main')).maxWidth") == "1000px"

        chromium.get(f"{base}/injected.html")
        assert chromium.title.startswith("Lethe audit report")  # the injected script did not run
        assert not chromium.execute_script(
            "return document.getElementById('remote').complete && document.getElementById('remote').naturalWidth > 0"
        )
    finally:
        server.shutdown()
        server.server_close()
    assert {"/report.html", "/injected.html"} <= set(requested) and "/remote.png" not in requested
