"""web/stylecloak.js keeps each node's last result (node.properties, saved with the workflow) and shows it again on
a cached re-run (ComfyUI sends only "execution_cached", no "executed") and when a saved workflow is reopened
(onConfigure); pack widgets get their room when the node is created. Runs the extension under node.js with
stand-ins of ComfyUI's app/api and a tiny DOM (tests/web_harness.mjs's); skips without node.js."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import { readFileSync } from "node:fs";
class El {
  constructor(tag) { this.tagName = tag; this.children = []; this.style = {}; this.className = ""; this.textContent = ""; }
  append(...c) { this.children.push(...c); } appendChild(c) { this.children.push(c); }
  replaceChildren(...c) { this.children = c; } addEventListener() {}
  getBoundingClientRect() { return { left: 0, width: 200 }; }
  all() { return [this, ...this.children.flatMap((c) => c.all ? c.all() : [])]; }
}
globalThis.document = { createElement: (t) => new El(t), getElementById: () => null, head: new El("head") };
globalThis.requestAnimationFrame = undefined;
const extensions = [], listeners = {};
globalThis.__app = { registerExtension: (e) => extensions.push(e) };
globalThis.__api = { apiURL: (p) => "/api" + p, addEventListener: (k, f) => { listeners[k] = f; } };
await import("./extensions/stylecloak/stylecloak.js");
const [type, message] = JSON.parse(readFileSync(process.argv[2], "utf8"));
function NodeType() { this.widgets = []; this.size = [100, 100]; this.properties = {}; this.type = type; this.id = 7; }
NodeType.prototype.addDOMWidget = function (name, t, element, options) {
  const w = { name, element, options }; this.widgets.push(w); return w; };
NodeType.prototype.computeSize = function () {
  return [150, 40 + this.widgets.reduce((h, w) => h + w.options.getMinHeight(), 0)]; };
NodeType.prototype.setSize = function (s) { this.size = s; };
for (const e of extensions) await e.beforeRegisterNodeDef(NodeType, { name: type });
for (const e of extensions) e.setup?.();
const text = (n) => n.widgets.flatMap((w) => w.element.all().map((e) => e.textContent)).filter(Boolean).join(" | ");
const out = {};
const node = new NodeType();
node.onNodeCreated?.();
globalThis.__app.graph = { getNodeById: (id) => (id === 7 ? node : null) };
out.created = { widgets: node.widgets.map((w) => w.name), size: node.size, text: text(node) };
node.onExecuted(message);
out.executed = text(node);
out.saved = JSON.parse(JSON.stringify(node.properties));
for (const w of node.widgets) w.element.replaceChildren();          // what a cached run leaves: nothing new drawn
listeners.execution_cached?.({ detail: { nodes: ["7"] } });
out.cached = text(node);
const reopened = new NodeType();                                    // a saved workflow opened again
reopened.properties = out.saved;
reopened.onNodeCreated?.();
reopened.onConfigure?.({});
out.reopened = text(reopened);
console.log(JSON.stringify(out));
"""


def _run(tmp_path, node_type, message):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node.js not installed")
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text("export const app = globalThis.__app;\n")
    (tmp_path / "scripts" / "api.js").write_text("export const api = globalThis.__api;\n")
    (tmp_path / "extensions" / "stylecloak").mkdir(parents=True)
    shutil.copy(ROOT / "web" / "stylecloak.js", tmp_path / "extensions" / "stylecloak" / "stylecloak.js")
    (tmp_path / "run.js").write_text(SCRIPT)
    (tmp_path / "in.json").write_text(json.dumps([node_type, message]))
    proc = subprocess.run([node, "run.js", "in.json"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


REPORT = {"verdict": "protected: the fine-tune did not learn the style", "sanity_check": {"passed": True},
          "conditions": {"base": {"verdict": "reference"}, "clean": {"trained_on": 3, "verdict": "learned"},
                         "cloaked": {"trained_on": 3, "verdict": "protected"}}}
REF = {"filename": "a.png", "subfolder": "stylecloak", "type": "temp"}
CASES = {
    "StyleCloak_MimicryTest": ({"stylecloak_mimicry": [REPORT], "stylecloak_memory": [{"asked": "auto"}]},
                               "stylecloak_report", ["protected: the fine-tune", "cloaked", "copy JSON"]),
    "StyleCloak_CloakImage": ({"stylecloak_compare": [{"clean": REF, "protected": REF, "stats": {"psnr": 35.25}}]},
                              "stylecloak_compare", ["PSNR 35.25 dB"]),
    "StyleCloak_Purify": ({"stylecloak_memory": [{"asked": "auto", "ran": None}]}, "stylecloak_memory",
                          ["memory: not used"]),
}


@pytest.mark.parametrize("node_type", sorted(CASES))
def test_results_come_back_on_cached_runs_and_reopened_workflows(tmp_path, node_type):
    message, widget, words = CASES[node_type]
    got = _run(tmp_path, node_type, message)
    for state in ("executed", "cached", "reopened"):
        for w in words:
            assert w in got[state], (state, got[state])
    assert got["saved"]["stylecloak_last_output"] == message
    if widget != "stylecloak_memory":   # room for the result from the start, with a hint until it runs
        assert got["created"]["widgets"] == [widget]
        assert got["created"]["size"][1] >= 300 and "run the node" in got["created"]["text"]
