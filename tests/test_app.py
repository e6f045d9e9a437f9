"""The web app end to end in a real headless Chromium: type a prompt, press Generate, wait for the images.

Needs gradio (`[app]`), selenium (`[browser]`) and Debian's chromium + chromium-driver (`.ci/run` installs them);
skipped with the reason otherwise. DALLE_CORE_APP_PIPELINE=DIR runs it on that pipeline (the demo's models) and
DALLE_CORE_APP_SCREENSHOT=PNG keeps the browser's screenshot (the README's picture)."""
from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_the_app_generates_in_a_real_browser(tmp_path):
    pytest.importorskip("gradio", reason="needs the [app] extra (gradio)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs the [browser] extra (selenium)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dalle_core.app import build_app

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    source = os.environ.get("DALLE_CORE_APP_PIPELINE")
    pipe = DALLEPipeline.from_pretrained(source) if source else tiny_pipeline()
    app = build_app(pipe)
    port = _free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120)
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#prompt textarea"))
        box.send_keys("a red circle on the left" if source else "a red circle")
        driver.find_element(By.ID, "generate").click()
        started = time.monotonic()
        images = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery img")
                            if len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 4 else False)
        assert len(images) >= 4 and time.monotonic() - started < 120
        # the images are really there: each has a source the browser loaded
        assert all(img.get_attribute("src") and img.get_property("naturalWidth") > 0 for img in images[:4])
        shot = os.environ.get("DALLE_CORE_APP_SCREENSHOT")
        driver.save_screenshot(str(Path(shot) if shot else tmp_path / "app.png"))
    finally:
        driver.quit()
        app.close()
