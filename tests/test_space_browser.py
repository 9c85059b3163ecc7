"""The Space in a real headless Chromium: upload a photo, read the label on the page, keep a screenshot."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_photo
from test_space import app  # space/app.py, loaded once

from hf_model.backbones import load_model, resolve_backbone
from hf_model.serving import open_photo

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is absent: apt-get install chromium")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app with a small bedroom model and no bird model: a pretrained backbone whose head says Modern 0.4%,
    Old 99.6% for every photo (where gradio's own rounding would print 0% and 100%)."""
    model_dir = tmp_path_factory.mktemp("bedroom_model")
    model = load_model(resolve_backbone("efficientnet-lite0"), ["Modern", "Old"], image_size=64)
    with torch.no_grad():
        model.timm_model.classifier.weight.zero_()
        model.timm_model.classifier.bias.copy_(torch.log(torch.tensor([0.004, 0.996])))
    model.save_pretrained(model_dir)
    bird = app.TaskModel(None, "No bird species model in this test.")
    models = {"bedroom": app.load_task_model(app.TASKS[0], str(model_dir)), "bird": bird}
    demo = app.build_demo(models)
    _, url, _ = app.launch(demo, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    yield url, models["bedroom"].classifier
    demo.close()


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(served[0])
        yield page
        browser.close()


def test_uploaded_photo_gets_its_label_on_the_page(page, served, tmp_path):
    photo = make_photo(tmp_path / "bedroom.jpg", (180, 140, 90), size=120, seed=3)
    expected = served[1].predict(open_photo(photo), top_k=2)

    page.set_input_files("#bedroom-photo input[type=file]", str(photo))
    page.get_by_role("button", name="Classify").click()
    sentence = page.locator("#bedroom-sentence")
    sentence.filter(has_text=expected.message).wait_for(timeout=30_000)
    label = page.locator("#bedroom-label .output-class").inner_text()
    screenshot = tmp_path / "space.png"
    page.screenshot(path=str(screenshot), full_page=True)

    assert label == next(iter(expected.scores))
    assert sentence.inner_text() == expected.message
    assert page.locator("#bedroom-heatmap img").count() == 1
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


def test_the_label_on_the_page_shows_the_percentages_of_the_sentence(page, tmp_path):
    photo = make_photo(tmp_path / "bed.jpg", (120, 100, 80), size=120, seed=4)
    page.set_input_files("#bedroom-photo input[type=file]", str(photo))
    page.get_by_role("button", name="Classify").click()
    page.locator("#bedroom-sentence").filter(has_text="sure this is Old").wait_for(timeout=30_000)

    rows = page.locator("#bedroom-label dl")
    assert [rows.nth(i).locator("dt").inner_text() for i in range(rows.count())] == ["Old", "Modern"]
    assert [rows.nth(i).locator("dd").inner_text() for i in range(rows.count())] == ["99%", "1%"]
    assert page.locator("#bedroom-sentence").inner_text() == "The model is very sure this is Old (99%)."


def test_a_file_that_is_not_an_image_gets_a_message_not_a_traceback(page, tmp_path):
    page.set_input_files("#bedroom-photo input[type=file]", str(make_photo(tmp_path / "room.jpg", (90, 90, 90))))
    page.get_by_role("button", name="Classify").click()
    page.locator("#bedroom-label .output-class").wait_for(timeout=30_000)
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("shopping list: milk, eggs")

    page.set_input_files("#bedroom-photo input[type=file]", str(not_a_photo))
    page.get_by_role("button", name="Classify").click()
    message = page.get_by_text("This file is not an image the demo can read")
    message.first.wait_for(timeout=30_000)

    assert "Traceback" not in page.content()
    assert page.locator("#bedroom-label .output-class").count() == 0  # the last answer was cleared
