"""The audit report's HTML page: one PNG per plot present, the verdict, escaping, omissions, no outside resource."""

import base64
import copy
import hashlib
import io
import re
from html.parser import HTMLParser

from PIL import Image

from lethe.signing import PublicKey, verify, verify_html
from tests.worker.report_factory import MISSED, REACHED, SIGNING_KEY, XSS_NAME, build_signed_report
from worker.reports.html import render_html
from worker.reports.report import sign_with_page

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVERY_PLOT = [
    "Forgetting over training steps",
    "Probe accuracy by layer",
    "Recovery by attack",
    "Relearning curves",
    "Restoration by component and window (KRS)",
    "Activation patching by component and window (KRS)",
]


class _Page(HTMLParser):
    """The page's images (attributes) and its text, as a browser would parse them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _png(src: str | None) -> bytes:
    prefix = "data:image/png;base64,"
    assert src is not None and src.startswith(prefix)
    return base64.b64decode(src[len(prefix) :], validate=True)


def _summary_row(page: str, attack: str) -> str:
    match = re.search(rf"<tr>\s*<td><strong>{attack}</strong></td>.*?</tr>", page, flags=re.DOTALL)
    assert match, f"no summary row for {attack}"
    return match.group(0)


def test_every_plot_is_an_embedded_decodable_png() -> None:
    page = render_html(build_signed_report())
    parsed = _Page(page)
    assert len(parsed.images) == len(EVERY_PLOT)
    for image in parsed.images:
        png = _png(image.get("src"))
        assert png.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(png)) as decoded:
            decoded.load()
            assert decoded.size == (640, 360)
        assert image.get("alt")
    for title in EVERY_PLOT:
        assert f"<h3>{title}</h3>" in page
    assert len(page.encode()) < 1_000_000


def test_verdicts_and_numbers_are_on_the_page() -> None:
    signed = build_signed_report()
    page = render_html(signed)
    assert '<section class="verdict shallow"' in page
    assert "Verdict: shallow" in page
    relearn = _summary_row(page, "relearn")
    assert all(cell in relearn for cell in ("0.970", "0.500", "0.900", "0.851", "0.25", "k=8", "shallow"))
    entry = next(a for a in signed["report"]["attacks"] if a["name"] == "relearn")
    # The worst variant's intervals (recovery, control, excess) as the report holds them.
    for low, high in (
        ("ci_low", "ci_high"),
        ("control_ci_low", "control_ci_high"),
        ("excess_ci_low", "excess_ci_high"),
    ):
        assert f"[{entry[low]:.3f}, {entry[high]:.3f}]" in relearn
    assert f'<td class="n">{entry["n"]}</td>' in relearn and entry["n"] == 100
    trigger = _summary_row(page, "trigger")
    assert "0.120" in trigger and "excess drop" in trigger and "0.05" in trigger
    assert "interval_spans_threshold" in trigger and "inconclusive" in trigger
    # The verdict's sentence says why the others did not conclude.
    assert "trigger: the interval contains the threshold" in page
    # The page names the key; the signature, which covers the page's hash, cannot be on the page it covers.
    assert signed["signature"]["key_id"] in page and signed["signature"]["value"] not in page
    assert "lethe verify-report report.json --key-url URL --html report.html" in page


def test_undefined_recovery_reads_inconclusive_with_a_dash() -> None:
    page = render_html(build_signed_report())
    paraphrase = _summary_row(page, "paraphrase")
    assert '<td class="n">—</td>' in paraphrase
    assert '<span class="pill inconclusive">inconclusive</span>' in paraphrase

    signed = build_signed_report(attacks=["paraphrase"])
    page = render_html(signed)
    assert signed["report"]["verdict"] == "inconclusive"
    assert "Verdict: inconclusive" in page
    assert signed["report"]["verdict_reasons"] == ["nothing_forgotten"]
    assert "paraphrase: forgetting removed less than min_forgetting" in page


def test_user_strings_are_escaped_in_html_and_drawn_as_text_in_plots() -> None:
    hostile = (XSS_NAME, 'piqa" onerror="alert(2)', r"cost $\notacommand{$ & more")
    signed = build_signed_report(retain_sets=hostile)
    page = render_html(signed)
    assert XSS_NAME not in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'onerror="' not in page
    assert 'retain:piqa" onerror="alert(2)' in "".join(_Page(page).text)  # the quotes reach the text, escaped
    assert "cost $\\notacommand{$ &amp; more" in page
    # The names reached the plots (legend of the training curves, alt text) without breaking matplotlib's TeX.
    parsed = _Page(page)
    assert len(parsed.images) == len(EVERY_PLOT)
    assert any(XSS_NAME in (image.get("alt") or "") for image in parsed.images)


def test_absent_data_omits_its_plot_and_says_so() -> None:
    signed = build_signed_report(attacks=["relearn", "quantize", "trigger"], training_curves=False, diagnostics=[])
    page = render_html(signed)
    assert len(_Page(page).images) == 2  # recovery by attack, relearning curves
    absent = ("Forgetting over training steps", "Probe accuracy by layer", "Restoration by component and window (KRS)")
    for title in absent:
        assert f'<p class="omitted"><strong>{title}</strong>: not shown' in page
        assert f"<h3>{title}</h3>" not in page

    no_attacks = build_signed_report(attacks=[], diagnostics=[])
    page = render_html(no_attacks)
    assert len(_Page(page).images) == 1  # only the training curves
    assert "This audit ran no attack." in page
    assert "This audit ran no diagnostic (restore, patch)." in page


def test_diagnostics_have_their_own_section_and_no_verdict() -> None:
    signed = build_signed_report(attacks=["paraphrase"])
    page = render_html(signed)
    # Only paraphrase (inconclusive) is judged: the diagnostics' high KRS makes nothing shallow.
    assert signed["report"]["verdict"] == "inconclusive" and "Verdict: inconclusive" in page
    section = page[page.index("<h2>Diagnostics: where the change sits</h2>") : page.index("<h2>Plots</h2>")]
    assert "can be removed outright" in section and "localization, not depth" in section
    assert "<strong>restore</strong>" in section and "<strong>patch</strong>" in section
    assert "pill" not in section
    # The last window of the patched MLP coefficients: layers 27-29, KRS 0.85 with its interval and rows.
    row = re.search(r"<td>mlp_coefficients</td>\s*<td class=\"n\">27–29</td>.*?</tr>", section, flags=re.DOTALL)
    assert row is not None
    assert all(cell in row.group(0) for cell in ("0.850", "0.800 – 0.900", "36"))
    assert "2 rows have no KRS" in section
    assert not _summary_row_exists(page, "restore") and not _summary_row_exists(page, "patch")


def _summary_row_exists(page: str, attack: str) -> bool:
    return re.search(rf"<tr>\s*<td><strong>{attack}</strong></td>", page) is not None


def test_page_references_nothing_outside_itself() -> None:
    page = render_html(build_signed_report())
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)


def test_rendering_is_a_pure_function_of_the_report() -> None:
    signed = build_signed_report()
    untouched = copy.deepcopy(signed)
    first = render_html(signed)
    assert signed == untouched
    assert render_html(signed) == first


def test_the_page_says_whether_forgetting_reached_its_target_and_shows_metric_intervals() -> None:
    page = render_html(build_signed_report())
    text = " ".join(" ".join(_Page(page).text).split())
    assert REACHED.summary() in text
    assert 'class="forgetting warning"' not in page
    # The stage table: forget_train's accuracy after forgetting (0.5 of 100 rows) with its Wilson interval and n.
    assert "0.500 [0.404, 0.596] n=100" in text

    missed = render_html(build_signed_report(forgetting=MISSED))
    missed_text = " ".join(" ".join(_Page(missed).text).split())
    assert 'class="forgetting warning"' in missed
    assert "Forgetting did NOT reach its target: forget_train accuracy is 0.760 after 20 steps" in missed_text
    assert "forget_heldout accuracy ROSE during forgetting: 0.640 before, 0.800 after" in missed_text


def test_the_signed_report_carries_the_hash_of_its_page() -> None:
    unsigned = build_signed_report()["report"]
    signed, page = sign_with_page(unsigned, SIGNING_KEY)
    keys = {SIGNING_KEY.key_id: PublicKey(SIGNING_KEY.key_id, SIGNING_KEY.public)}
    assert verify(signed, keys).valid and verify_html(signed["report"], page).valid
    assert signed["report"]["html_sha256"] == hashlib.sha256(page).hexdigest()
    assert SIGNING_KEY.key_id in page.decode()
    # An edited page no longer matches; a report that claims another page no longer verifies.
    assert not verify_html(signed["report"], page.replace(b"shallow", b"robust", 1)).valid
    signed["report"]["html_sha256"] = hashlib.sha256(b"another page").hexdigest()
    assert not verify(signed, keys).valid
