"""The web UI: its actions directly, then the real page in headless Chromium."""

from __future__ import annotations

import base64
import io
import math
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the web UI needs the [ui] extra")

from smoothed_energy_guidance.cli.metadata import read_png_settings, save_png  # noqa: E402
from smoothed_energy_guidance.cli.settings import GenerationSettings  # noqa: E402
from smoothed_energy_guidance.ui.actions import Form, Studio, form_from_png  # noqa: E402
from smoothed_energy_guidance.ui.app import build_app  # noqa: E402

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "ui.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def small_form(**changes) -> Form:
    values = dict(
        model="tiny-random",
        prompt="a red cube",
        negative_prompt="",
        width=32,
        height=32,
        steps=3,
        cfg=5.0,
        seed=7,
        seg_scale=3.0,
        sigma="2",
        layers="",
        seg_start=0.0,
        seg_end=1.0,
    )
    return Form(**{**values, **changes})


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    return Studio(device="cpu", out=tmp_path_factory.mktemp("ui"))


def test_compare_writes_two_pngs_with_settings(studio):
    without, with_seg = studio.compare(small_form())
    assert read_png_settings(without)[1]["settings"]["seg_scale"] == 0.0
    assert read_png_settings(with_seg)[1]["settings"]["blur_sigma"] == 2.0
    assert not np.array_equal(np.asarray(Image.open(without)), np.asarray(Image.open(with_seg)))


def test_sweep_and_loading_settings_back(studio):
    cells = studio.sweep(small_form(steps=2))
    assert [label for _, label in cells] == [
        "without SEG",
        "SEG σ = 1",
        "SEG σ = 4",
        "SEG σ = 16",
        "SEG σ = 64",
        "SEG σ = ∞",
    ]
    form = form_from_png(cells[-1][0])
    assert form.prompt == "a red cube" and form.sigma == "inf" and form.steps == 2 and form.seed == 7


@pytest.mark.parametrize("sigma", [0.5, 1.0, 9000.0, 10000.5, 0.1, math.inf])
def test_a_png_sigma_survives_the_form_exactly(tmp_path, sigma):
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "in.png", GenerationSettings(blur_sigma=sigma))
    form = form_from_png(path)
    assert form.settings().blur_sigma == sigma
    assert form.sigma == ("inf" if math.isinf(sigma) else repr(sigma))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _fetch_png(page, src: str) -> bytes:
    data = page.evaluate(
        """async (src) => { const r = await fetch(src); const b = new Uint8Array(await r.arrayBuffer());
           let s = ''; for (const x of b) s += String.fromCharCode(x); return btoa(s); }""",
        src,
    )
    return base64.b64decode(data)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (installed by the test command)")
def test_page_compares_in_a_real_browser(studio, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from smoothed_energy_guidance.cli.demo import interface_defaults
    from smoothed_energy_guidance.ui.app import PAGE_CSS

    app = build_app(studio=studio)  # the bundled trained model, at its measured defaults (the README screenshot)
    _, _, measured_scale, _, _ = interface_defaults()
    port = _free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, css=PAGE_CSS)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/")
            prompt = "a yellow triangle on the center, sand ground, night sky"
            page.locator("#prompt textarea").fill(prompt)
            page.locator("#steps input").fill("20")
            page.locator("#compare").click()
            without = page.locator("#without-seg img")
            with_seg = page.locator("#with-seg img")
            expect(without).to_be_visible(timeout=120_000)
            expect(with_seg).to_be_visible(timeout=120_000)
            pngs = [_fetch_png(page, image.get_attribute("src")) for image in (without, with_seg)]
            records = [read_png_settings(io.BytesIO(png))[1] for png in pngs]
            assert [r["settings"]["prompt"] for r in records] == [prompt] * 2
            assert [r["settings"]["model"] for r in records] == ["seg-toy"] * 2
            assert [r["settings"]["seg_scale"] for r in records] == [0.0, measured_scale]
            pixels = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in pngs]
            assert not np.array_equal(*pixels)

            # the sweep fills the gallery: without SEG, then σ = 1, 4, 16, 64, ∞
            page.locator("#sweep").click()
            expect(page.locator("#gallery img")).to_have_count(6, timeout=120_000)
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)

            # an error is a message on the page, and the app keeps serving
            page.locator("#model textarea, #model input").first.fill("./no-such-model")
            page.locator("#compare").click()
            expect(page.get_by_text("was not found", exact=False).first).to_be_visible(timeout=60_000)
            page.locator("#model textarea, #model input").first.fill("seg-toy")

            # dropping a PNG loads its settings back into the form
            dropped = tmp_path / "dropped.png"  # σ = 0.3 lies below the picker's range: kept exactly
            record = read_png_settings(io.BytesIO(pngs[1]))[1]["settings"]
            save_png(
                Image.open(io.BytesIO(pngs[1])), dropped, GenerationSettings.from_json({**record, "blur_sigma": 0.3})
            )
            page.locator("#prompt textarea").fill("something else")
            page.locator("#drop-png input[type=file]").set_input_files(str(dropped))
            expect(page.locator("#prompt textarea")).to_have_value(prompt, timeout=60_000)
            expect(page.locator("#steps input")).to_have_value("20")
            expect(page.locator("#sigma textarea, #sigma input").first).to_have_value("0.3")

            browser.close()
    finally:
        app.close()
