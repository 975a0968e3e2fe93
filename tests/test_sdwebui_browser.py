"""The StyleCloak tab in a real browser, in a real A1111 and a real Forge (each skipped unless ``A1111_PATH`` /
``FORGE_PATH`` is set; both need Debian's ``chromium`` + ``chromium-driver`` and selenium).

For each host: links this extension into ``extensions/`` (removed afterwards), starts the web UI with its own
``launch.py --skip-prepare-environment`` on the CPU on a free loopback port (no ``--listen``) with an SD 1.5-shaped
random checkpoint (``A1111_CKPT`` / ``FORGE_CKPT``, else one made by ``tools/make_random_checkpoint.py``) and a
settings file of its own (so StyleCloak writes into a temporary folder and the checkout's ``config.json`` is left
alone), opens it in headless Chromium, switches to the StyleCloak tab, screenshots each section, then runs a
one-step Mist cloak from the page (upload, method, steps, button) and checks what a user sees: the web UI's progress
bar while it runs, the result gallery and a status line (no traceback, no error box). Screenshots go to
``$STYLECLOAK_BROWSER_OUT/<host>/`` (default ``bench_out/browser_sdwebui/``). The A1111 run inherits ``HF_HOME``
(see tests/test_sdwebui_a1111_real.py for the offline CLIP tokenizer cache).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from webui_real import A1111_ARGS, FORGE_ARGS, ROOT, child_env, linked_extension, random_sd15, webui_python

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
OUT = Path(os.environ.get("STYLECLOAK_BROWSER_OUT", ROOT / "bench_out" / "browser_sdwebui"))
HOSTS = {"a1111": ("A1111_PATH", "A1111_PYTHON", "A1111_CKPT", A1111_ARGS),
         "forge": ("FORGE_PATH", "FORGE_PYTHON", "FORGE_CKPT", FORGE_ARGS)}
SECTIONS = ["Cloak", "Select Layers", "Purify", "Mimicry Test"]

pytestmark = [pytest.mark.host, pytest.mark.slow,
              pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                 reason="needs chromium and chromium-driver")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the web UI exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise AssertionError(f"the web UI did not answer at {url} in {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module", params=list(HOSTS))
def webui(request, tmp_path_factory):
    """(host name, page URL, output folder, screenshot folder) of a running web UI with the extension."""
    name = request.param
    path_var, python_var, ckpt_var, args = HOSTS[name]
    if not os.environ.get(path_var):
        pytest.skip(f"set {path_var} to a real {name} checkout")
    root = Path(os.environ[path_var]).expanduser().resolve()
    tmp = tmp_path_factory.mktemp(name)
    ckpt = Path(os.environ[ckpt_var]) if os.environ.get(ckpt_var) else random_sd15(tmp)
    settings = tmp / "config.json"
    settings.write_text(json.dumps({"stylecloak_outdir": str(tmp / "out")}))
    port = _free_port()
    log = tmp / "webui.log"
    cmd = [webui_python(root, python_var), "launch.py", "--skip-prepare-environment", "--port", str(port),
           "--ckpt", str(ckpt), "--ui-settings-file", str(settings), *args]
    with linked_extension(root), open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=child_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            _wait_http(url, proc, log)
            shots = OUT / name
            shots.mkdir(parents=True, exist_ok=True)
            yield name, url, tmp / "out", shots
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
    (OUT / name / "webui.log").write_text(log.read_text())


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2000", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _by_xpath(driver, xpath: str, timeout: float = 120):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(ec.element_to_be_clickable((By.XPATH, xpath)))


def _css(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def _section_button(driver, label: str):
    return _by_xpath(driver, f"//div[@id='tab_stylecloak']//div[contains(@class, 'tab-nav')]"
                             f"//button[normalize-space()='{label}']")


def _shot(driver, element, path: Path) -> Path:
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", element)
    time.sleep(0.5)
    element.screenshot(str(path))
    return path


def _status_line(driver, section: str) -> str:
    """The section's status line (the tab's own coloured line; not Gradio's timer overlay or the time taken)."""
    return driver.execute_script(f"var p = document.querySelector('#stylecloak_{section}_status p[style]');"
                                 "return p ? p.innerText : '';")


def _wait_status(driver, section: str, timeout: float = 120, old: str = "") -> str:
    end = time.time() + timeout
    while time.time() < end:
        text = _status_line(driver, section)
        if text and text != old:
            return text
        time.sleep(0.2)
    raise AssertionError(f"no new status line in {section} after {timeout} s")


def _visible_text(driver) -> str:
    return driver.execute_script("return document.getElementById('tab_stylecloak').innerText")


def test_tab_sections_and_a_cloak_from_the_page(webui, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    name, url, out, shots = webui
    browser.get(url)
    _by_xpath(browser, "//div[@id='tabs']//button[normalize-space()='StyleCloak']", timeout=300).click()
    tab = _css(browser, "#tab_stylecloak")
    for i, label in enumerate(SECTIONS, 1):
        _section_button(browser, label).click()
        time.sleep(1)
        _shot(browser, tab, shots / f"{i}_{label.lower().replace(' ', '_')}.png")
        run = {"Cloak": "cloak", "Select Layers": "layers", "Purify": "purify", "Mimicry Test": "mimicry"}[label]
        assert _css(browser, f"#stylecloak_{run}_run").is_displayed(), f"{label}: no run button"
    text = _visible_text(browser)
    assert "Traceback" not in text and "Error" not in text, text[:2000]

    _section_button(browser, "Cloak").click()
    _css(browser, "#stylecloak_cloak_run").click()  # nothing uploaded: one clear line, no traceback
    _wait_status(browser, "cloak")
    error = _status_line(browser, "cloak")
    assert "no input images" in error and "Traceback" not in error, error
    art = tmp_path / "art.png"
    Image.radial_gradient("L").convert("RGB").resize((64, 64)).save(art)
    _css(browser, "#stylecloak_cloak_files input[type=file]").send_keys(str(art))
    method = _css(browser, "#stylecloak_cloak_method input")
    method.click()
    method.send_keys(Keys.CONTROL, "a")
    method.send_keys("mist")
    method.send_keys(Keys.ENTER)
    _by_xpath(browser, "//div[@id='tab_stylecloak']//*[normalize-space()='Expert settings']").click()
    steps = _by_xpath(browser, "//div[@id='stylecloak_cloak_steps']//input")
    steps.send_keys(Keys.CONTROL, "a")
    steps.send_keys("1", Keys.TAB)
    time.sleep(1)
    _shot(browser, tab, shots / "5_cloak_filled.png")
    _css(browser, "#stylecloak_cloak_run").click()
    status, saw_progress, end = "", False, time.time() + 900
    while time.time() < end:
        # the web UI's requestProgress puts its bar just before the section's progress element
        if not saw_progress and browser.execute_script("return !!document.querySelector("
                                                       "'#tab_stylecloak .progressDiv .progress')"):
            saw_progress = True
            time.sleep(1)
            _shot(browser, tab, shots / "6_cloak_running.png")
        status = _status_line(browser, "cloak")
        if status and status != error:  # the earlier error line stays until this job's line replaces it
            break
        time.sleep(0.2)
    time.sleep(2)  # the gallery is filled in the same update; give it a moment to draw
    _shot(browser, tab, shots / "7_cloak_result.png")
    _shot(browser, _css(browser, "#stylecloak_cloak_status"), shots / "8_cloak_status.png")
    assert "Cloaked 1 image(s) with mist" in status, status
    assert saw_progress, "the web UI's progress bar never showed while the cloak ran"
    images = browser.execute_script(
        "return document.querySelectorAll('#stylecloak_cloak_gallery img').length")
    assert images >= 2  # the cloaked image and its change view
    text = _visible_text(browser)
    assert "Traceback" not in text, text[:2000]
    pngs = list(out.glob("*/art.png"))
    assert len(pngs) == 1 and Image.open(pngs[0]).size == (64, 64)
