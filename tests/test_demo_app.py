"""Demo app: input validation and scoring (no Gradio needed), and a real headless-Chromium browser test.

The browser test needs Gradio, Selenium, Debian's ``chromium`` and ``chromium-driver``; it is skipped when one
is missing unless ``BIGMOE_REQUIRE_BROWSER=1`` (set by ``make test`` once Chromium is installed), where it fails instead. With
``BIGMOE_SCREENSHOT=path.png`` it also copies its screenshot there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

from modeling_bigmoe.demo_app import (
    EXAMPLE_KINDS,
    add_demo_app_parser,
    analyse_capture,
    example_capture,
    load_demo_model,
    load_upload,
)
from modeling_bigmoe.hub_configs import tiny_config
from modeling_bigmoe.image_processing_bigmoe import BigMoeImageProcessor
from modeling_bigmoe.modeling_bigmoe import BigMoeForFaceAntiSpoofing

# Chromium as root in a container without a network (see the README)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1700")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    BigMoeForFaceAntiSpoofing(tiny_config(decision_threshold=0.4321)).save_pretrained(folder)
    BigMoeImageProcessor(size=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / "depth.png")
    Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(folder / "ir.png")
    Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(folder / "ir_40x48.png")
    Image.fromarray(rng.integers(0, 256, (48, 48, 4), dtype=np.uint8), mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / "tiny.png")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def _direct_score(model, processor, rgb, depth=None, ir=None) -> float:
    enc = processor([rgb], depth_images=None if depth is None else [depth], ir_images=None if ir is None else [ir],
                    return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=enc["pixel_values"], depth_pixel_values=enc["depth_pixel_values"],
                    ir_pixel_values=enc["ir_pixel_values"], modality_mask=enc["modality_mask"])
    return float(out.logits.softmax(-1)[0, 1])


def test_analyse_scores_like_the_model(saved_model, images):
    model, processor = load_demo_model(saved_model)
    assert model.config.decision_threshold == pytest.approx(0.4321)
    result = analyse_capture(model, processor, str(images / "rgb.png"), str(images / "depth.png"))
    assert result.ok, result.message
    expected = _direct_score(model, processor, str(images / "rgb.png"), str(images / "depth.png"))
    assert result.live_score == pytest.approx(expected, abs=1e-6)
    assert result.threshold == pytest.approx(0.4321)
    assert result.decision == ("live" if expected >= 0.4321 else "spoof")
    assert result.modalities == ["rgb", "depth"] and result.message == "Scored rgb+depth."
    assert result.inputs_image.dtype == np.uint8 and result.inputs_image.shape == (300, 750, 3)
    assert result.routing_image.shape[2] == 3 and len(result.summary["blocks"]) == 2
    # the same for all three, and for RGB only
    full = analyse_capture(model, processor, str(images / "rgb.png"), str(images / "depth.png"), str(images / "ir.png"))
    assert full.modalities == ["rgb", "depth", "ir"]
    assert full.live_score == pytest.approx(_direct_score(model, processor, str(images / "rgb.png"),
                                                          str(images / "depth.png"), str(images / "ir.png")), abs=1e-6)
    assert analyse_capture(model, processor, str(images / "rgb.png")).modalities == ["rgb"]


@pytest.mark.parametrize(("case", "expected"), [
    ({"depth": "depth.png"}, "Depth given without RGB"),
    ({"depth": "depth.png", "ir": "ir.png"}, "Depth and IR given without RGB"),
    ({}, "no image: upload an RGB image"),
    ({"rgb": "notes.txt"}, "RGB: notes.txt is not an image file"),
    ({"rgb": "rgb.png", "ir": "notes.txt"}, "IR: notes.txt is not an image file"),
    ({"rgb": "rgba.png"}, "mode 'RGBA'"),
    ({"rgb": "tiny.png"}, "RGB: tiny.png is 8x8 px; the demo needs at least 16"),
    ({"rgb": "rgb.png", "ir": "ir_40x48.png"}, "IR is 48x40 px but RGB is 48x48 px"),
    ({"rgb": "gone.png"}, "RGB: file 'gone.png' not found"),
])
def test_bad_input_gives_a_message(saved_model, images, case, expected):
    model, processor = load_demo_model(saved_model)
    paths = {k: str(images / v) for k, v in case.items()}
    result = analyse_capture(model, processor, paths.get("rgb"), paths.get("depth"), paths.get("ir"))
    assert not result.ok and result.live_score is None
    assert result.message.startswith("Input refused: ") and expected in result.message, result.message


def test_load_upload_and_model_errors(tmp_path, images):
    image = load_upload(images / "depth.png", "Depth")
    assert image.size == (48, 48) and image.mode == "L"
    assert load_upload(None, "IR") is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_demo_model(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_demo_model("./relative/missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot load a model from"):
        load_demo_model(tmp_path / "empty")
    parser = argparse.ArgumentParser()
    add_demo_app_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo-app", "--model", str(tmp_path / "nope"), "--port", "7999"])
    assert (args.host, args.port) == ("127.0.0.1", 7999)
    with pytest.raises(FileNotFoundError, match="nope"):
        args.func(args)


def test_example_capture(tmp_path):
    assert EXAMPLE_KINDS[0] == "live" and len(EXAMPLE_KINDS) > 2
    for kind in ("live", EXAMPLE_KINDS[1]):
        paths = example_capture(kind, tmp_path)
        assert sorted(paths) == ["depth", "ir", "rgb"]
        with Image.open(paths["rgb"]) as rgb, Image.open(paths["depth"]) as depth:
            assert (rgb.size, rgb.mode, depth.size, depth.mode) == ((64, 64), "RGB", (64, 64), "L")
    again = example_capture("live", tmp_path / "again")
    assert Image.open(again["ir"]).tobytes() == Image.open(tmp_path / "live_ir.png").tobytes()  # deterministic
    with pytest.raises(ValueError, match="kind must be one of"):
        example_capture("deepfake", tmp_path)


# ---------------------------------------------------------------- the browser test


def _browser_or_skip():
    missing = []
    try:
        import gradio  # noqa: F401
        import selenium  # noqa: F401
    except ImportError as err:
        missing.append(f"python package {err.name}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None:
        missing.append("chromium")
    if driver is None:
        missing.append("chromedriver (Debian: chromium-driver)")
    if missing:
        message = f"browser test needs {', '.join(missing)}"
        if os.environ.get("BIGMOE_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " (BIGMOE_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_browser_upload_score_and_bad_input(saved_model, images, tmp_path):
    chromium, driver_path = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from modeling_bigmoe.demo_app import build_demo, launch_demo

    start = time.perf_counter()
    model, processor = load_demo_model(saved_model)
    demo = build_demo(model, processor, examples_dir=tmp_path / "examples")
    port = _free_port()
    url = launch_demo(demo, host="127.0.0.1", port=port, block=False)
    assert url.startswith(f"http://127.0.0.1:{port}")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#analyse"))

        def value(elem_id):
            return browser.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input").get_attribute(
                "value")

        def upload(elem_id, path):
            for button in browser.find_elements(By.CSS_SELECTOR, f"#{elem_id} button[aria-label=Clear]"):
                button.click()  # a file is shown: clear it so that the upload input comes back
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f"#{elem_id} input[type=file]"))
            browser.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=file]").send_keys(str(path))
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#{elem_id} td.filename[aria-label="{path.name}"]'))

        def analyse():
            before = browser.find_element(By.CSS_SELECTOR, "#message").text
            browser.find_element(By.CSS_SELECTOR, "#analyse").click()
            # while the call runs the old text stays, under a progress timer
            wait.until(lambda b: before not in b.find_element(By.CSS_SELECTOR, "#message").text
                       and b.find_element(By.CSS_SELECTOR, "#message").text.strip())
            return browser.find_element(By.CSS_SELECTOR, "#message").text

        for elem_id, name in (("rgb-file", "rgb.png"), ("depth-file", "depth.png"), ("ir-file", "ir.png")):
            upload(elem_id, images / name)
        assert analyse() == "Scored rgb+depth+ir."
        expected = _direct_score(model, processor, str(images / "rgb.png"), str(images / "depth.png"),
                                 str(images / "ir.png"))
        assert float(value("live-score")) == pytest.approx(expected, abs=1e-4)
        decision = "live" if expected >= 0.4321 else "spoof"
        assert value("decision") == f"{decision} (threshold 0.4321)"
        assert value("modalities") == "rgb, depth, ir"
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#routing-figure img"))
        shot = tmp_path / "app_screenshot.png"
        assert browser.save_screenshot(str(shot))
        with Image.open(shot) as im:
            assert im.size[0] >= 1000
        if os.environ.get("BIGMOE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["BIGMOE_SCREENSHOT"])

        # a non-image upload: a message on the page, the fields cleared, and the app keeps serving
        upload("ir-file", images / "notes.txt")
        assert "IR: notes.txt is not an image file" in analyse()
        assert value("live-score") == ""
        upload("ir-file", images / "ir.png")
        assert analyse() == "Scored rgb+depth+ir."
        assert float(value("live-score")) == pytest.approx(expected, abs=1e-4)

        # the synthetic example picker (default kind "live"): fills the three files and scores them
        browser.find_element(By.CSS_SELECTOR, "#load-example").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '#rgb-file td.filename[aria-label="live_rgb.png"]'))
        example = [str(tmp_path / "examples" / f"live_{m}.png") for m in ("rgb", "depth", "ir")]
        example_score = f"{_direct_score(model, processor, *example):.4f}"
        assert example_score != f"{expected:.4f}"  # so that the wait below sees the example's own score
        wait.until(lambda b: value("live-score") == example_score)
        assert browser.find_element(By.CSS_SELECTOR, "#message").text == "Scored rgb+depth+ir."
    finally:
        browser.quit()
        demo.close()
    assert time.perf_counter() - start < 60


def test_analyse_other_model_types(images):
    from modeling_bigmoe.hub_configs_lasoftmoe import tiny_config as lasoftmoe_tiny
    from modeling_bigmoe.hub_configs_mmda import tiny_config as mmda_tiny
    from modeling_bigmoe.modeling_lasoftmoe import LaSoftMoeForFaceAntiSpoofing
    from modeling_bigmoe.modeling_mmda import MmdaForFaceAntiSpoofing

    processor = BigMoeImageProcessor(size=32)
    paths = [str(images / name) for name in ("rgb.png", "depth.png", "ir.png")]
    mmda = MmdaForFaceAntiSpoofing(mmda_tiny()).eval()
    result = analyse_capture(mmda, processor, *paths)
    assert result.ok and result.message == "Scored rgb+depth+ir."
    assert result.live_score == pytest.approx(_direct_score(mmda, processor, *paths), abs=1e-6)
    assert len(result.summary["alignment_live"]) == 2 * mmda.config.udsa_depth + 1
    # La-SoftMoE in the paper's RGB-only mode: Depth / IR are accepted and said to be ignored
    lasoftmoe = LaSoftMoeForFaceAntiSpoofing(lasoftmoe_tiny()).eval()
    result = analyse_capture(lasoftmoe, processor, *paths)
    assert result.ok and result.modalities == ["rgb"]
    assert result.message == "Scored rgb (depth and ir ignored: this model reads RGB only)."
    assert result.live_score == pytest.approx(_direct_score(lasoftmoe, processor, paths[0]), abs=1e-6)
    assert result.routing_image.shape[2] == 3
