"""The web app end to end in a real headless Chromium: type a prompt, press Generate, wait for the images.

Needs gradio (`[app]`), selenium (`[browser]`) and Debian's chromium + chromium-driver (`.ci/run` installs them);
skipped with the reason otherwise. DALLE_CORE_APP_PIPELINE=DIR runs it on that pipeline (the demo's models) and
DALLE_CORE_APP_SCREENSHOT=PNG keeps the browser's screenshot (the README's picture)."""
from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dalle_core import DALLEPipeline
from helpers import tiny_pipeline

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def test_editor_mask_is_true_where_a_layer_was_painted():
    from dalle_core.app import editor_mask

    background = np.full((32, 32, 3), 255, dtype=np.uint8)
    layer = np.zeros((32, 32, 4), dtype=np.uint8)
    layer[16:, :, 3] = 255  # the bottom half painted
    image, mask = editor_mask({"background": background, "layers": [layer], "composite": background}, 16)
    assert image.shape == (1, 3, 16, 16) and bool((image == 1).all())
    expected = torch.zeros(1, 16, 16, dtype=torch.bool)
    expected[:, 8:] = True
    assert torch.equal(mask, expected)
    assert editor_mask({"background": background, "layers": [], "composite": background}, 16)[1] is None
    assert editor_mask(None, 16) == (None, None)


@pytest.mark.parametrize("rerank", ["none", "likelihood"])
def test_the_generate_handler_fills_the_gallery_row_by_row(rerank):
    """What the Generate button streams (`gallery_updates`): a gallery after each row of codes, the rows not drawn
    yet blank white and the drawn ones not, then the images `pipe(...)` draws with the same seed."""
    from dalle_core.app import gallery_updates

    pipe = tiny_pipeline()
    fmap, size = pipe.dalle.image_fmap_size, pipe.dalle.vae.image_size
    band = size // fmap  # pixel rows per row of codes
    candidates = 1 if rerank == "none" else 4  # with reranking the partial galleries show every candidate
    updates = list(gallery_updates(pipe, "a red circle", 2, 1.5, 0.7, 10, 3, rerank, None))
    assert fmap == 4 and len(updates) == fmap  # rows 1, 2 and 3 drawn, then the finished images
    for rows, update in enumerate(updates[:-1], start=1):
        assert len(update) == 2 * candidates
        for image in update:
            pixels = np.asarray(image)
            assert pixels.shape == (size, size, 3)
            assert (pixels[rows * band:] == 255).all(), f"after row {rows}: the rows not drawn yet are blank"
            for drawn in range(rows):
                assert (pixels[drawn * band:(drawn + 1) * band] != 255).any(), f"after row {rows}: row {drawn + 1}"
    options = {} if rerank == "none" else dict(rerank=rerank, candidates=4)
    expected = pipe("a red circle", num_images=2, cond_scale=1.5, temperature=0.7, filter_thres=1.0 - 10 / 100.0,
                    seed=3, **options).images
    final = updates[-1]
    assert len(final) == 2 and all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(final, expected))
    assert all((np.asarray(image)[(fmap - 1) * band:] != 255).any() for image in final)  # the last row drawn too
    with pytest.raises(ValueError, match="type a prompt first"):
        next(gallery_updates(pipe, "  ", 2, 1.5, 0.7, 10, 3, rerank, None))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("speculative", [None, 3])
def test_the_generate_handler_can_be_resumed_on_other_threads(speculative):
    """Gradio runs each step of a generator handler on whichever worker thread is free. Grad and inference modes
    are per thread, so the sampler enters inference mode around each step (`utils.stepwise`) rather than across
    its yields: resumed on a new thread at every step, the stream draws what it draws on one thread."""
    from concurrent.futures import ThreadPoolExecutor

    from dalle_core.app import gallery_updates

    pipe = tiny_pipeline()
    if speculative:  # the library's stream itself, through the speculative decoder
        def updates_of():
            return (images for _, images in pipe.stream("a red circle", num_images=2, seed=3, speculative=speculative))
    else:
        def updates_of():
            return gallery_updates(pipe, "a red circle", 2, 1.5, 0.7, 10, 3, "none", None)
    updates, got = updates_of(), []
    while True:
        with ThreadPoolExecutor(1) as pool:  # a new thread for every step
            got.append(pool.submit(next, updates, None).result())
        if got[-1] is None:
            break
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()  # nothing leaked into this thread
    expected = list(updates_of())
    assert len(got) - 1 == len(expected) >= 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for x, y in zip(got, expected) for a, b in zip(x, y))
    with pytest.raises(ValueError, match="rerank must be"):
        list(gallery_updates(pipe, "a red circle", 2, 1.5, 0.7, 10, 3, "best", None))


ROW_MEANS = """const img = arguments[0];
if (!img.complete || !img.naturalWidth) return null;
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const context = canvas.getContext('2d');
context.drawImage(img, 0, 0);
const data = context.getImageData(0, 0, canvas.width, canvas.height).data, means = [];
for (let y = 0; y < canvas.height; y++) {
  let sum = 0;
  for (let x = 0; x < canvas.width; x++) {
    const i = 4 * (y * canvas.width + x);
    sum += data[i] + data[i + 1] + data[i + 2];
  }
  means.push(sum / (3 * canvas.width));
}
return means;"""


def _row_means(image: Any) -> np.ndarray:
    """The mean brightness of each pixel row of a PIL image."""
    return np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=(1, 2))


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_the_app_generates_in_a_real_browser(tmp_path):
    """Type a prompt, press Generate: the gallery first shows the images with only their first row of codes drawn
    (the stream is held there until the browser has shown them, so no timing is involved), then the finished ones."""
    pytest.importorskip("gradio", reason="needs the [app] extra (gradio)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the [browser] extra (selenium)")
    from selenium.common.exceptions import JavascriptException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dalle_core.app import build_app

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    source = os.environ.get("DALLE_CORE_APP_PIPELINE")
    pipe = DALLEPipeline.from_pretrained(source) if source else tiny_pipeline()
    fmap, size = pipe.dalle.image_fmap_size, pipe.dalle.vae.image_size
    sent: dict = {}  # rows drawn -> the images the app streamed
    release, finished = threading.Event(), threading.Event()
    stream = pipe.stream

    def held_stream(*args: Any, **kwargs: Any):  # the pipeline's stream, paused after its first row
        for rows, images in stream(*args, **kwargs):
            sent[rows] = images
            yield rows, images
            if rows == 1:
                release.wait(180)
        finished.set()

    pipe.stream = held_stream
    app = build_app(pipe)
    port = _free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)

    def shown(d: Any) -> Any:
        """The brightness of each pixel row of the gallery's first four images, once all four are loaded."""
        images = d.find_elements(By.CSS_SELECTOR, "#gallery img")
        rows = [d.execute_script(ROW_MEANS, img) for img in images[:4]] if len(images) >= 4 else []
        return [np.asarray(r) for r in rows] if len(rows) == 4 and all(r is not None for r in rows) else False

    def close_to(browser: list, images: list) -> bool:  # the gallery stores webp (lossy): a few levels off
        return all(b.shape == (size,) and np.abs(b - _row_means(im)).max() < 12 for b, im in zip(browser, images))

    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120, ignored_exceptions=(StaleElementReferenceException, JavascriptException))
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        box.send_keys("a red circle on the left" if source else "a red circle")
        driver.find_element(By.ID, "generate").click()
        partial = wait.until(shown)  # the stream is held after row 1: this is the gallery of that update
        assert not finished.is_set() and sorted(sent) == [1] and len(sent[1]) == 4
        band = size // fmap
        assert all(b[band:].min() > 240 for b in partial), "the rows not drawn yet are blank in the browser"
        assert close_to(partial, sent[1]), "the browser shows the images of the first row's update"
        release.set()
        final = wait.until(lambda d: finished.is_set() and (rows := shown(d)) and close_to(rows, sent[fmap]) and rows)
        assert sorted(sent) == list(range(1, fmap + 1))
        if not source:  # the tiny pipeline's untrained images are grey: the finished rows are not blank any more
            assert all(b[band:].min() < 200 for b in final)
        images = driver.find_elements(By.CSS_SELECTOR, "#gallery img")
        # the images are really there: each has a source the browser loaded
        assert all(img.get_attribute("src") and img.get_property("naturalWidth") > 0 for img in images[:4])
        shot = os.environ.get("DALLE_CORE_APP_SCREENSHOT")
        driver.save_screenshot(str(Path(shot) if shot else tmp_path / "app.png"))
    finally:
        release.set()
        driver.quit()
        app.close()
