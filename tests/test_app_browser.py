"""The app in a real browser: Debian's chromium driven by Playwright (headless), on the toy world.

Set PERSONALIZE_APP_SCREENSHOT=path to also keep the screenshot (the README's is made this way).
"""

import os
import shutil

import pytest
import torch

from personalize.artifacts import save_embedding

pytestmark = pytest.mark.browser  # runs by default; `pytest -m 'not browser'` leaves it out

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_generate_in_the_browser(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (apt-get install chromium); .ci/run installs it")
        pytest.skip("no chromium on this machine: apt-get install chromium (CI runs this test)")
    from playwright.sync_api import sync_playwright

    from app.main import build_parser, make_app
    from test_app import free_port

    arts = tmp_path / "artifacts"
    save_embedding(arts, "sks", torch.randn(1, 48), "textual_inversion", "toyworld")
    port = free_port()
    demo, launch = make_app(build_parser().parse_args(
        ["--artifacts-dir", str(arts), "--outputs-dir", str(tmp_path / "out"), "--port", str(port), "--device", "cpu"]))
    demo.launch(prevent_thread_lock=True, quiet=True, **launch)
    shot = tmp_path / "app.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.locator("#prompt textarea").wait_for(timeout=60_000)
            page.locator("#prompt textarea").fill("a photo of a smiling sks wearing a hat on a blue background")
            page.locator("#artifacts").get_by_text("sks |").click()
            page.locator("#generate").click()
            images = page.locator("#gallery img")
            images.nth(1).wait_for(timeout=120_000)  # the default is 2 images
            page.wait_for_function("document.querySelector('#info textarea').value.startsWith('seeds:')",
                                   timeout=30_000)
            count = images.count()
            info = page.locator("#info textarea").input_value()
            page.screenshot(path=str(shot), full_page=True)
            # a failing run (empty prompt) shows its message and keeps the last images
            page.locator("#prompt textarea").fill("")
            page.locator("#generate").click()
            message = page.get_by_text("the prompt is empty")
            message.first.wait_for(timeout=30_000)
            page.wait_for_timeout(1000)  # let the page settle on its error state
            kept = images.count()
            overlay = page.locator("#gallery").get_by_text("Error", exact=True).count()
            browser.close()
    finally:
        demo.close()
    assert count == 2, count
    assert kept == 2 and overlay == 0, f"after a failed run the gallery has {kept} images, {overlay} error overlays"
    assert '"artifacts": ["sks"]' in info
    assert shot.stat().st_size > 10_000
    if os.environ.get("PERSONALIZE_APP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["PERSONALIZE_APP_SCREENSHOT"])
