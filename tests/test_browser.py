"""The app in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

Loads the page at desktop and phone widths, clicks an example and Run, waits for both answers, checks
that the figures, the gallery and the contact sheet rendered and that nothing overflows the screen,
drives the frame slider and the heatmap toggle, and saves a screenshot of each width to tests/artifacts/.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
VIEWPORTS = {"desktop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}
EXAMPLE_ROW = 1  # brief_event.mp4: "What word appears on the yellow sign?"
RUN_TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def run_example(page, url: str) -> None:
    """Open the app, click an example, press Run and wait until the figures are drawn."""
    page.goto(url)
    page.wait_for_selector("#banner")
    page.locator("tr.tr-body").nth(EXAMPLE_ROW).click()
    page.wait_for_function("() => document.querySelector('video')?.src?.includes('brief_event')")
    question = page.get_by_label("Question")
    assert question.input_value() == "What word appears on the yellow sign?"
    page.get_by_role("button", name="Run", exact=True).click()
    page.locator("#status", has_text="Done").wait_for(timeout=RUN_TIMEOUT_MS)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .bars path').length > 0")


def load_lazy_images(page) -> None:
    """Scroll through the page so that lazily loaded images load, then back to the top."""
    height = page.evaluate("document.body.scrollHeight")
    for _ in range(0, height, 500):
        page.mouse.wheel(0, 500)
        time.sleep(0.05)
    page.wait_for_function("() => [...document.images].every(img => img.complete)")
    page.evaluate("window.scrollTo(0, 0)")


def save_screenshot(page, name: str) -> Path:
    """A full-page PNG with a 256-colour palette: the UI's flat colours survive, the file stays small."""
    ARTIFACTS.mkdir(exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    path = ARTIFACTS / f"app_{name}.png"
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def rendered_plots(page) -> list[int]:
    """Number of bars drawn in each plotly figure on the page."""
    return page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].map(p => p.querySelectorAll('.bars path').length)"
    )


@pytest.mark.parametrize("width", list(VIEWPORTS))
def test_an_example_runs_and_the_answers_figures_and_overlays_render(browser, url, width):
    page = browser.new_page(viewport=VIEWPORTS[width])
    try:
        run_example(page, url)
        answers = [page.locator(f"#{box} textarea").input_value() for box in ("vcast-answer", "full-answer")]
        assert all(answers), answers

        # The cost chart (4 panels x 2 runs) and the allocation figure (one bar per temporal group).
        assert sorted(rendered_plots(page)) == [8, 8]  # 16 frames by default on the CPU: 8 groups
        gallery_images = page.locator("#gallery img")
        assert gallery_images.count() >= 16
        assert page.locator("#metrics table tr").count() == 8  # header + 7 metrics
        assert (
            page.get_by_role("link", name="vcast_selection.json").count()
            + page.locator("a[download], a[href$='vcast_selection.json']").count()
            >= 1
        )

        load_lazy_images(page)
        sizes = page.evaluate("() => [...document.querySelectorAll('#gallery img, img')].map(i => i.naturalWidth)")
        assert sizes and min(sizes) > 0  # every image decoded, the contact sheet included
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a {width} screen"
        save_screenshot(page, width)
    finally:
        page.close()


def test_the_frame_slider_and_heatmap_toggle_drive_the_gallery(browser, url):
    page = browser.new_page(viewport=VIEWPORTS["desktop"])
    try:
        run_example(page, url)
        preview = page.locator("#gallery .preview img").first
        caption = page.locator("#gallery .preview .caption")
        first_caption, first_src = caption.inner_text(), preview.get_attribute("src")

        frame = page.get_by_label("number input for Frame", exact=True)
        frame.fill("11")
        frame.press("Enter")
        page.wait_for_function("(src) => document.querySelector('#gallery .preview img').src !== src", arg=first_src)
        assert caption.inner_text() != first_caption

        kept_src = preview.get_attribute("src")
        page.get_by_label("Show the token-score heatmap").check()
        page.wait_for_function("(src) => document.querySelector('#gallery .preview img').src !== src", arg=kept_src)
        assert frame.input_value() == "11"

        page.locator("#gallery button.thumbnail-item").nth(4).click()
        page.wait_for_function(
            "() => document.querySelector('input[aria-label=\"number input for Frame\"]').value === '4'"
        )
    finally:
        page.close()


def test_a_bad_upload_shows_the_reason_and_the_next_run_still_works(browser, url, tmp_path):
    not_a_video = tmp_path / "holiday.mp4"
    not_a_video.write_text("this is a text file\n")
    page = browser.new_page(viewport=VIEWPORTS["desktop"])
    try:
        page.goto(url)
        page.wait_for_selector("#banner")
        page.locator("#video-in input[type=file]").set_input_files(str(not_a_video))
        page.get_by_label("Question").fill("What happens?")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("This is a text file, not a video").wait_for()
        # No stage left hanging, no empty answer boxes.
        page.wait_for_function("() => document.querySelector('#status').innerText.trim() === ''")
        page.locator("#vcast-answer").wait_for(state="hidden")
        run_example(page, url)  # the same server answers the next run
    finally:
        page.close()
