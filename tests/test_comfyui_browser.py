"""The example workflows in a real browser against a real ComfyUI (run when COMFYUI_PATH and COMFYUI_PYTHON are set;
skipped otherwise).

Starts ComfyUI on CPU on a loopback port with the pack linked into custom_nodes and the SD 1.5-shaped random
checkpoint (as tests/test_comfyui_real.py does), drives headless Chromium (Debian's ``chromium`` +
``chromium-driver``, through selenium), and for every example workflow: loads the saved UI JSON through the front end
(``app.loadGraphData``), checks every widget's value against example_workflows/definitions.py (the hidden
"control after generate" widget included) and that the front end saves the same ``widgets_values`` back, sets the
small CPU settings, queues it from the page, waits for the run, and checks that the pack's DOM widgets (before/after
slider, Mimicry Test report, memory line) are shown, lie inside their node and show their content unclipped.
Screenshots of the whole graph and of each pack widget go to $STYLECLOAK_BROWSER_OUT (default bench_out/browser/).
Chromium: $CHROMIUM (default /usr/bin/chromium), driver: $CHROMEDRIVER (default /usr/bin/chromedriver).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMFY = os.environ.get("COMFYUI_PATH")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
OUT = Path(os.environ.get("STYLECLOAK_BROWSER_OUT", ROOT / "bench_out" / "browser"))
pytestmark = [pytest.mark.host, pytest.mark.slow,
              pytest.mark.skipif(not (COMFY and os.environ.get("COMFYUI_PYTHON")),
                                 reason="set COMFYUI_PATH and COMFYUI_PYTHON to run"),
              pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                 reason="needs chromium and chromium-driver")]

sys.path.insert(0, str(ROOT / "example_workflows"))
from definitions import CHECKPOINT, CPU_TEST_OVERRIDES, WORKFLOWS  # noqa: E402

#: Widgets the pack's front-end extension adds (web/stylecloak.js), per node type.
PACK_WIDGETS = {"StyleCloak_CloakImage": ["stylecloak_compare"], "StyleCloak_ProtectionReport": ["stylecloak_compare"],
                "StyleCloak_MimicryTest": ["stylecloak_report"], "StyleCloak_Purify": ["stylecloak_memory"]}


def _call(url, payload=None, timeout=30):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else {}


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from test_comfyui_real import Server, _free_port  # the same server start as the API-level tests

    root = Path(COMFY)
    pack = root / "custom_nodes" / "StyleCloak"
    if not pack.exists():
        pack.symlink_to(ROOT, target_is_directory=True)
    ckpt = root / "models" / "checkpoints" / CHECKPOINT
    if not ckpt.exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_random_checkpoint.py"), str(ckpt),
                        "--kind", "sd15", "--dtype", "fp16"], check=True)
    from PIL import Image

    art = Image.open(ROOT / "examples" / "artwork.png").convert("RGB")
    (root / "input" / "artist").mkdir(parents=True, exist_ok=True)
    art.save(root / "input" / "artwork.png")
    for k in range(3):
        art.rotate(90 * k).save(root / "input" / "artist" / f"art_{k}.png")
    srv = Server(root, _free_port(), tmp_path_factory.mktemp("comfy") / "server.log")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(comfy):
    pytest.importorskip("selenium", reason="pip install selenium (the browser driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="stylecloak-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1800,1100",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(60)
    try:
        driver.get(comfy.url + "/")
        _wait_front_end(driver)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait_front_end(driver, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if driver.execute_script("return !!(window.app && app.graph && window.LiteGraph && "
                                 "LiteGraph.registered_node_types['StyleCloak_CloakImage'])"):
            time.sleep(3)  # extensions finish registering
            return
        time.sleep(1)
    raise RuntimeError("the front end did not load the StyleCloak nodes")


JS_WIDGETS = """
const out = {};
for (const n of app.graph._nodes) out[n.id] = {type: n.type, pos: n.pos, size: n.size,
  widgets: (n.widgets || []).map(w => [w.name, w.value === undefined ? null : w.value]),
  saved: n.serialize().widgets_values ?? []};
return out;
"""

JS_FIT = """
const nodes = app.graph._nodes;
const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1])) - 40;
const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
const c = app.canvas.canvas.getBoundingClientRect();
const scale = Math.min(1.0, (c.width - 140) / (x1 - x0), (c.height - 100) / (y1 - y0));
app.canvas.ds.scale = scale;
app.canvas.ds.offset = [100 / scale - x0, 70 / scale - y0];
app.canvas.setDirty(true, true);
app.canvas.draw(true, true);
return scale;
"""

# Each pack DOM widget: its box and the node's box in client pixels, and whether its content is clipped.
JS_DOM = """
const names = arguments[0];
const ds = app.canvas.ds, c = app.canvas.canvas.getBoundingClientRect();
const title = LiteGraph.NODE_TITLE_HEIGHT;
const out = [];
for (const n of app.graph._nodes) {
  for (const w of n.widgets || []) {
    if (!names.includes(w.name)) continue;
    const el = w.element || w.stylecloakRoot;
    const r = el ? el.getBoundingClientRect() : null;
    const node = {left: (n.pos[0] + ds.offset[0]) * ds.scale + c.left,
                  top: (n.pos[1] - title + ds.offset[1]) * ds.scale + c.top,
                  right: (n.pos[0] + n.size[0] + ds.offset[0]) * ds.scale + c.left,
                  bottom: (n.pos[1] + n.size[1] + ds.offset[1]) * ds.scale + c.top};
    const clipped = [];
    if (el) for (const d of el.querySelectorAll('*')) {
      const s = getComputedStyle(d);
      if ((s.overflow === 'auto' || s.overflow === 'hidden' || s.overflowY === 'auto') &&
          (d.scrollHeight > d.clientHeight + 2 || d.scrollWidth > d.clientWidth + 2))
        clipped.push(`${d.className} ${d.scrollWidth}x${d.scrollHeight} in ${d.clientWidth}x${d.clientHeight}`);
    }
    out.push({id: n.id, type: n.type, name: w.name, node,
              box: r && {left: r.left, top: r.top, right: r.right, bottom: r.bottom, width: r.width, height: r.height},
              visible: !!el && el.isConnected && getComputedStyle(el).display !== 'none' &&
                       getComputedStyle(el.parentElement || el).display !== 'none',
              text: el ? el.innerText : '',
              images: el ? [...el.querySelectorAll('img')].map(i => [i.naturalWidth, i.complete]) : [],
              clipped});
  }
}
return out;
"""


def _expected_widgets(class_type: str, inputs: dict, shown: list) -> list:
    """(name, value) the definition says for each widget the front end built for the node."""
    want = []
    for name, _ in shown:
        if name == "control_after_generate":
            want.append((name, "fixed"))
        elif name in inputs and not isinstance(inputs[name], tuple):
            want.append((name, inputs[name]))
    return want


def _set_widgets(driver, overrides: dict):
    driver.execute_script("""
      for (const [id, values] of Object.entries(arguments[0])) {
        const n = app.graph.getNodeById(Number(id));
        for (const [k, v] of Object.entries(values)) {
          const w = n.widgets.find(w => w.name === k);
          if (!w) throw new Error('no widget ' + k + ' on node ' + id);
          w.value = v; w.callback?.(v);
        }
      }""", overrides)


def _wait_idle(comfy, known: set, timeout=1800) -> dict:
    """Wait until ComfyUI has run a new prompt and its queue is empty; returns that prompt's history."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = _call(f"{comfy.url}/history")
        new = [k for k in hist if k not in known]
        queue = _call(f"{comfy.url}/queue")
        if new and not queue.get("queue_running") and not queue.get("queue_pending"):
            return hist[new[-1]]
        time.sleep(2)
    raise TimeoutError("the queued workflow did not finish")


def _check_dom_widgets(driver, expected_types: set, where: str) -> list:
    shown = driver.execute_script(JS_DOM, sorted({w for ws in PACK_WIDGETS.values() for w in ws}))
    missing = expected_types - {s["type"] for s in shown}
    assert not missing, f"{where}: no widget on {missing}"
    for s in shown:
        label = f"{where}: node {s['id']} {s['type']}.{s['name']}"
        assert s["visible"] and s["box"] and s["box"]["height"] > 10 and s["box"]["width"] > 10, label
        n, b = s["node"], s["box"]
        tol = 3
        assert (b["left"] >= n["left"] - tol and b["right"] <= n["right"] + tol and b["top"] >= n["top"] - tol
                and b["bottom"] <= n["bottom"] + tol), f"{label}: widget {b} outside its node {n}"
        assert not s["clipped"], f"{label}: content cut off: {s['clipped']}"
        assert s["text"].strip(), f"{label}: shows no text"
        if s["name"] == "stylecloak_compare":
            assert s["images"] and all(w > 0 and ok for w, ok in s["images"]), f"{label}: images not loaded"
        if s["name"] == "stylecloak_report":
            assert "copy JSON" in s["text"] and "condition" in s["text"], label
    return shown


def _no_overlap(driver, where: str):
    boxes = driver.execute_script("return app.graph._nodes.map(n => [n.id, n.pos[0], n.pos[1] - "
                                  "LiteGraph.NODE_TITLE_HEIGHT, n.pos[0] + n.size[0], n.pos[1] + n.size[1]])")
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]
            assert apart, f"{where}: nodes {a[0]} and {b[0]} overlap"


def _export_workflow(driver, comfy) -> Path:
    """Run the page's own Workflow -> Export command (no filename prompt) and return the file Chromium downloaded."""
    folder = Path(tempfile.mkdtemp(prefix="stylecloak-export-"))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(folder)})
    driver.execute_async_script("""
      const done = arguments[0];
      (async () => {
        await app.extensionManager.setting.set('Comfy.PromptFilename', false);
        await app.extensionManager.command.execute('Comfy.ExportWorkflow');
      })().then(() => done(1), e => done(String(e)));""")
    deadline = time.time() + 30
    while time.time() < deadline:
        done = [p for p in folder.glob("*.json")]
        if done and not list(folder.glob("*.crdownload")):
            return done[0]
        time.sleep(0.5)
    raise AssertionError("the Export command downloaded no workflow file")


def _open_workflow(driver, path: Path):
    """What Workflow -> Open does: the page's hidden file input gets the file (selenium stands in for the file
    chooser the Open command shows), and the front end loads it."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "comfy-file-input").send_keys(str(path))
    deadline = time.time() + 30
    while time.time() < deadline:
        if driver.execute_script("return app.graph._nodes.length") > 0:
            time.sleep(2)
            return
        time.sleep(0.5)
    raise AssertionError(f"opening {path.name} loaded no nodes")


JS_ZOOM = """
const n = app.graph.getNodeById(arguments[0]);
app.canvas.ds.scale = 1.0;
app.canvas.ds.offset = [120 - n.pos[0], 110 - n.pos[1]];
app.canvas.setDirty(true, true);
app.canvas.draw(true, true);
"""


def _shots(driver, name: str, shown: list, tag: str):
    """A screenshot of the whole graph, and one of each pack widget's node at 100 % zoom (readable)."""
    from PIL import Image

    OUT.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(OUT / f"{name}_{tag}.png"))
    dpr = driver.execute_script("return window.devicePixelRatio") or 1
    for s in shown:
        driver.execute_script(JS_ZOOM, s["id"])
        time.sleep(1)   # the DOM widgets follow the canvas on the next frame
        (one,) = [x for x in driver.execute_script(JS_DOM, [s["name"]]) if x["id"] == s["id"]]
        path = OUT / f"{name}_{tag}_node{s['id']}_{s['name']}.png"
        driver.save_screenshot(str(path))
        n = one["node"]
        box = [int(max(0, v * dpr)) for v in (n["left"] - 4, n["top"] - 4, n["right"] + 4, n["bottom"] + 4)]
        Image.open(path).crop(box).save(path)
    driver.execute_script(JS_FIT)


@pytest.mark.parametrize("name", list(WORKFLOWS))
def test_example_workflow_in_the_browser(comfy, browser, name):
    t0 = time.time()
    saved = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
    browser.execute_script("app.graph.clear();")
    browser.execute_async_script("const done = arguments[1]; app.loadGraphData(arguments[0]).then(() => done(1), "
                                 "e => done(String(e)));", saved)
    time.sleep(1)
    got = browser.execute_script(JS_WIDGETS)
    nodes = WORKFLOWS[name]["nodes"]
    assert sorted(map(str, got)) == sorted(nodes)
    for nid, (ctype, inputs) in nodes.items():
        shown = got[nid]["widgets"]
        values = dict((k, v) for k, v in shown)
        for k, v in _expected_widgets(ctype, inputs, shown):
            assert values[k] == v, f"{name} node {nid} ({ctype}).{k}: the front end shows {values[k]!r}, want {v!r}"
        file_values = next(n["widgets_values"] for n in saved["nodes"] if str(n["id"]) == nid)
        assert got[nid]["saved"] == file_values, f"{name} node {nid}: the front end would save {got[nid]['saved']}"
    browser.execute_script(JS_FIT)
    time.sleep(1)
    _no_overlap(browser, f"{name} as loaded")
    _shots(browser, name, [], "loaded")

    _set_widgets(browser, CPU_TEST_OVERRIDES[name])
    known = set(_call(f"{comfy.url}/history"))
    browser.execute_async_script("const done = arguments[0]; app.queuePrompt(0, 1).then(() => done(1), "
                                 "e => done(String(e)));")
    hist = _wait_idle(comfy, known)
    assert hist["status"]["status_str"] == "success", json.dumps(hist["status"])[:3000]
    time.sleep(3)  # images of the widgets load
    browser.execute_script(JS_FIT)
    time.sleep(1)
    expected = {ctype for ctype, _ in nodes.values() if ctype in PACK_WIDGETS}
    shown = _check_dom_widgets(browser, expected, f"{name} after the run")
    _no_overlap(browser, f"{name} after the run")
    _shots(browser, name, shown, "ran")

    # A cached re-run (nothing changed): ComfyUI serves the cached outputs; the widgets must still be there.
    browser.execute_script("for (const n of app.graph._nodes) for (const w of n.widgets || []) "
                           "if (w.name && w.name.startsWith('stylecloak_') && w.element) w.element.replaceChildren();")
    known = set(_call(f"{comfy.url}/history"))
    browser.execute_async_script("const done = arguments[0]; app.queuePrompt(0, 1).then(() => done(1), "
                                 "e => done(String(e)));")
    hist = _wait_idle(comfy, known, timeout=300)
    assert hist["status"]["status_str"] == "success"
    time.sleep(3)
    _check_dom_widgets(browser, expected, f"{name} cached re-run")

    # Saved through the page's own Export command and reopened through its Open command in a freshly loaded page:
    # the widget values come back, and so do the pack's widgets with the last results (kept in the node properties).
    before = browser.execute_script(JS_WIDGETS)
    exported = _export_workflow(browser, comfy)
    browser.refresh()
    _wait_front_end(browser)
    browser.execute_script("app.graph.clear();")
    _open_workflow(browser, exported)
    reopened = browser.execute_script(JS_WIDGETS)
    def own(widgets):  # the front end's image-preview widget ("$$canvas-image-preview") comes with new outputs only
        return [w for w in widgets if not str(w[0]).startswith("$$")]

    for nid in nodes:
        assert own(reopened[nid]["widgets"]) == own(before[nid]["widgets"]), f"{name} node {nid}: other values"
        assert reopened[nid]["saved"] == before[nid]["saved"], f"{name} node {nid} would save other values"
    browser.execute_script(JS_FIT)
    time.sleep(2)
    shown = _check_dom_widgets(browser, expected, f"{name} reopened from its exported file")
    _shots(browser, name, shown, "reopened")
    print(f"{name}: {time.time() - t0:.0f} s in the browser")
