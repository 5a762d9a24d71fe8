"""The app in a real browser: headless Chromium (Debian's `chromium`, the one system package these tests need)
driven by Playwright.

At desktop and phone widths: an example runs with two methods; the answers are in view when it ends, every method
has its answer box, budget series and overlay choice, the tiny model's costs show no speed ratio, nothing is wider
than the screen; a screenshot of each width goes to tests/artifacts/. Then the overlay controls, and a bad upload.
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
VIEWPORTS = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}
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


def run_example(page, url: str, extra_method: str | None = None) -> None:
    """Open the app, click an example, tick another method, press Run and wait until the figures are drawn."""
    page.goto(url)
    page.wait_for_selector("#banner")
    page.locator("tr.tr-body").nth(EXAMPLE_ROW).click()
    page.wait_for_function("() => document.querySelector('video')?.src?.includes('brief_event')")
    assert page.get_by_label("Question").input_value() == "What word appears on the yellow sign?"
    if extra_method:
        page.locator("#methods").get_by_label(extra_method).check()
    page.get_by_role("button", name="Run", exact=True).click()
    page.locator("#status", has_text="Done").wait_for(timeout=RUN_TIMEOUT_MS)
    page.wait_for_function("() => document.querySelectorAll('#budget-plot .bars path').length > 0")


def svg_texts(page, selector: str) -> list[str]:
    return page.evaluate(f"() => [...document.querySelectorAll('{selector}')].map(t => t.textContent)")


def in_viewport(page, selector: str) -> bool:
    return page.evaluate(f"""() => {{ const r = document.querySelector('{selector}').getBoundingClientRect();
                                    return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight; }}""")


def load_lazy_images(page) -> None:
    """Scroll through the page so that lazily loaded images load, then back to the top."""
    height = page.evaluate("document.body.scrollHeight")
    for _ in range(0, height, 500):
        page.mouse.wheel(0, 500)
        time.sleep(0.05)
    page.wait_for_function("() => [...document.images].every(img => img.complete)")
    page.evaluate("() => { scrollTo(0, 0); document.querySelectorAll('#gallery *').forEach(e => e.scrollTop = 0); }")


def save_screenshot(page, name: str) -> Path:
    """A full-page PNG with a 256-colour palette: the UI's flat colours survive, the file stays small."""
    ARTIFACTS.mkdir(exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
    path = ARTIFACTS / f"app_{name}.png"
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


@pytest.mark.parametrize("width", list(VIEWPORTS))
def test_two_methods_run_with_answers_in_view_budget_series_overlay_choice_and_no_speed_ratio(browser, url, width):
    page = browser.new_page(viewport=VIEWPORTS[width])
    try:
        run_example(page, url, extra_method="EVS (vLLM)")
        time.sleep(0.5)  # anything that would scroll the page at the end has done so by now
        assert in_viewport(page, "#answer-0"), f"the V-CAST answer is out of view on a {width} screen"
        boxes = ("answer-0", "answer-1", "full-answer")
        answers = {box: page.locator(f"#{box} textarea").input_value() for box in boxes}
        assert all(answers.values()), answers
        assert page.locator("#answer-1 label, #answer-1 span").first.inner_text().startswith("EVS (vLLM)")

        legend = svg_texts(page, "#budget-plot .legendtext")
        assert {"V-CAST budget", "EVS (vLLM) budget", "curvature"} <= set(legend)
        assert page.locator("#overlay-method label").all_inner_texts() == ["V-CAST", "EVS (vLLM)"]
        assert page.locator("#gallery img").count() >= 16  # 16 frames by default on the CPU

        # The tiny model's costs: counts and memory, no timing and so no speed ratio.
        costs = page.locator("#metrics").inner_text() + " ".join(svg_texts(page, "#cost-plot text"))
        assert "Timings are left out" in costs
        assert not any(word in costs for word in ("prefill ms", "first token", "tokens/s", "total ms", " ms"))

        load_lazy_images(page)
        sizes = page.evaluate("() => [...document.images].map(i => i.naturalWidth)")
        assert sizes and min(sizes) > 0
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a {width} screen"
        save_screenshot(page, width)
    finally:
        page.close()


def test_the_overlay_selector_frame_slider_and_heatmap_drive_the_gallery(browser, url):
    page = browser.new_page(viewport=VIEWPORTS["desktop"])
    try:
        run_example(page, url, extra_method="EVS (vLLM)")
        captions = page.locator("#gallery .caption-label")
        vcast_captions = captions.all_inner_texts()
        page.locator("#overlay-method").get_by_label("EVS (vLLM)").check()
        page.wait_for_function("(first) => document.querySelector('#gallery .caption-label').innerText !== first",
                               arg=vcast_captions[0])  # fmt: skip
        assert captions.all_inner_texts() != vcast_captions  # EVS's budgets per frame

        frame = page.get_by_label("number input for Frame", exact=True)
        frame.fill("11")
        frame.press("Enter")
        page.locator("#gallery .preview img").first.wait_for()
        preview = page.locator("#gallery .preview img").first
        kept_src = preview.get_attribute("src")
        page.get_by_label("Token-score heatmap").check()
        page.wait_for_function("(src) => document.querySelector('#gallery .preview img')?.src !== src", arg=kept_src)
        assert frame.input_value() == "11"
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
        page.locator("#answer-0").wait_for(state="hidden")
        run_example(page, url)  # the same server answers the next run
    finally:
        page.close()
