"""`getok demo --web` in a real browser: Debian's chromium, driven by selenium through chromedriver.

The real command serves the Gradio page on 127.0.0.1 (a subprocess, the tiny random Qwen2.5-VL of
the conftest behind it); the browser loads a bundled sample, types a query, presses Predict and
waits (bounded) for the overlay and the answer. The page must show exactly what the prediction API
returns for that image and query: the answer text, and the overlay's pixels (fetched from the
page's own image URL). A screenshot is saved to ``$GETOK_ARTIFACTS`` (default: the test's tmp
folder) and its path printed. Without chromium / chromedriver the test skips with the reason,
except under CI=true, where it fails (.ci/run installs them).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
#: Debian's paths; GETOK_CHROMIUM / GETOK_CHROMEDRIVER point elsewhere (then PATH is not searched).
CHROMIUM = os.environ.get("GETOK_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GETOK_CHROMEDRIVER", "/usr/bin/chromedriver")
QUERY = "the yellow circle"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1300")


@pytest.fixture(scope="session")
def browser_paths() -> tuple[str, str]:
    """Paths of chromium and chromedriver; skips when one is missing (fails under CI=true), before
    any model is built."""
    found = {}
    for name, path, var in (("chromium", CHROMIUM, "GETOK_CHROMIUM"), ("chromedriver", CHROMEDRIVER,
                                                                      "GETOK_CHROMEDRIVER")):
        found[name] = path if os.access(path, os.X_OK) else None if var in os.environ else shutil.which(name)
    missing = [name for name, path in found.items() if not path]
    if missing:
        why = (f"{' and '.join(missing)} not found (apt-get install chromium chromium-driver; looked at "
               f"{CHROMIUM}, {CHROMEDRIVER} and PATH; GETOK_CHROMIUM / GETOK_CHROMEDRIVER set other paths)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI: {why}", pytrace=False)
        pytest.skip(why)
    return found["chromium"], found["chromedriver"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail when ``proc`` exits or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"getok demo --web exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"getok demo --web did not answer on {url} within {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def web_app(work, tiny_model, tmp_path):
    """The URL of `getok demo --web --model TINY` serving on a free port (stopped afterwards), and
    the sample folder it uses."""
    port = free_port()
    samples = tmp_path / "samples"
    log = tmp_path / "web.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "getok_core.cli", "demo", "--web", "--model", tiny_model, "--port", str(port),
           "--samples", str(samples), "--max-new-tokens", "48"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, proc, log, timeout_s=300)
        yield url, samples, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def chrome(chromium: str, chromedriver: str, profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    driver.set_page_load_timeout(120)
    return driver


def artifacts(tmp_path: Path) -> Path:
    out = Path(os.environ.get("GETOK_ARTIFACTS") or tmp_path / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def fetch_png(url: str) -> np.ndarray:
    from PIL import Image

    with urllib.request.urlopen(url, timeout=30) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))


def expected(tiny_model: str, image_path: str, samples: Path):
    """What the prediction API answers for QUERY on the sample image (the page's settings: seg,
    0 rounds, the region decoder, 48 new tokens), computed in this process."""
    import argparse

    from getok_core.cli import _decoder_kwargs
    from getok_core.data.images import load_image
    from getok_core.inference.web import make_session

    args = argparse.Namespace(model=tiny_model, server=None, served_model=None, samples=str(samples),
                              max_new_tokens=48,
                              device="cpu", dtype="auto", grid_size=32, decoder_kwargs=_decoder_kwargs)
    return make_session(args).answer(load_image(image_path), QUERY, "seg", 0, "region")


def test_web_demo_in_chromium(browser_paths, web_app, tiny_model, tmp_path):
    """One browser session: load a sample, type the query, submit, wait for the answer, save a
    screenshot; then compare what the page showed with the prediction API's own answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from getok_core.inference import sample_queries
    from getok_core.inference.web import IDS

    chromium, chromedriver = browser_paths
    url, samples, log = web_app
    out = artifacts(tmp_path)
    driver = chrome(chromium, chromedriver, tmp_path / "chrome-profile")
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120, poll_frequency=0.5)
        css = lambda key, sel="": f"#{IDS[key]} {sel}".strip()  # noqa: E731
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, css("load", "")))).click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, css("image", "img"))))
        box = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, css("query", "textarea"))))
        first_path, first_query, _ = sample_queries(samples)[0]
        wait.until(lambda d: box.get_attribute("value") == first_query)  # the sample filled the expression
        box.clear()
        box.send_keys(QUERY)
        driver.find_element(By.CSS_SELECTOR, css("submit")).click()

        answer_box = driver.find_element(By.CSS_SELECTOR, css("answer", "textarea"))
        slow = WebDriverWait(driver, 300, poll_frequency=1)
        slow.until(lambda d: answer_box.get_attribute("value")
                   and d.execute_script("const i = document.querySelector(arguments[0]);"
                                        "return i !== null && i.complete && i.naturalWidth > 0;",
                                        css("overlay", "img")))
        shot = out / "web_demo.png"
        driver.save_screenshot(str(shot))
        print(f"\nweb demo screenshot: {shot}")
        shown_answer = answer_box.get_attribute("value")
        overlay_src = driver.find_element(By.CSS_SELECTOR, css("overlay", "img")).get_attribute("src")
        status = driver.find_element(By.CSS_SELECTOR, css("status")).text
        dialogue = driver.find_element(By.CSS_SELECTOR, css("dialogue", "textarea")).get_attribute("value")
    finally:
        driver.quit()

    shown = fetch_png(overlay_src)
    from PIL import Image

    Image.fromarray(shown).save(out / "web_demo_overlay.png")
    want = expected(tiny_model, first_path, samples)
    assert shown_answer == want["answer"], (shown_answer, want["answer"])
    assert f"Please segment: {QUERY}." in dialogue and want["answer"] in dialogue
    assert ("invalid" in status) == ("invalid" in want["status"]), status
    assert shown.shape == want["overlay"].shape and shown.shape[0] >= 384, shown.shape
    assert np.array_equal(shown, want["overlay"]), "the page's overlay differs from the prediction API's"
    assert "Traceback" not in log.read_text()
