// Runs web/stylecloak.js against stand-ins of ComfyUI's app/api and a tiny DOM; prints what it drew as JSON.
// argv[2]: [[node name, [UI messages]]]; optional argv[3]: [[exported function, [arguments]]], results in "calls".
import { readFileSync } from "node:fs";
const registry = {};
class El {
  constructor(tag) { this.tagName = tag; this.children = []; this.style = {}; this.listeners = {};
    this.className = ""; this.textContent = ""; }
  append(...c) { this.children.push(...c); } appendChild(c) { this.children.push(c); }
  replaceChildren(...c) { this.children = c; }
  addEventListener(k, f) { (this.listeners[k] ||= []).push(f); }
  fire(k, e = {}) { (this.listeners[k] || []).forEach((f) => f(e)); }
  getBoundingClientRect() { return { left: 0, width: 200 }; }
  set id(v) { registry[v] = this; this._id = v; } get id() { return this._id; }
  all() { return [this, ...this.children.flatMap((c) => c.all ? c.all() : [])]; }
}
globalThis.document = { createElement: (t) => new El(t), getElementById: (i) => registry[i] || null,
                        head: new El("head") };
const extensions = [];
globalThis.__app = { registerExtension: (e) => extensions.push(e) };
const mod = await import("./extensions/stylecloak/stylecloak.js");
const payloads = JSON.parse(readFileSync(process.argv[2], "utf8"));
function makeNode(name) {
  const calls = [];
  function NodeType() { this.widgets = []; this.size = [100, 100]; }
  NodeType.prototype.onExecuted = function (m) { calls.push(m); };
  NodeType.prototype.addDOMWidget = function (name, type, element, options) {
    const w = { name, type, element, options }; this.widgets.push(w); return w; };
  NodeType.prototype.computeSize = function () { return [150, 300]; };
  NodeType.prototype.setSize = function (s) { this.size = s; };
  return { NodeType, calls, name };
}
const out = { extensions: extensions.map((e) => e.name), runs: [] };
for (const [name, messages] of payloads) {
  const t = makeNode(name);
  const original = t.NodeType.prototype.onExecuted;
  for (const e of extensions) await e.beforeRegisterNodeDef(t.NodeType, { name });
  const node = new t.NodeType();
  const run = { name, wrapped: t.NodeType.prototype.onExecuted !== original, states: [] };
  for (const m of messages) {
    node.onExecuted(m);
    const w = node.widgets[0];
    const els = w ? w.element.all() : [];
    const slider = els.find((e) => e.type === "range");
    if (slider) { slider.value = "30"; slider.fire("input"); }
    run.states.push({ widgets: node.widgets.map((x) => [x.name, x.options.serialize, x.serialize]),
      minHeight: w ? w.options.getMinHeight() : null,
      srcs: els.filter((e) => e.tagName === "img").map((e) => e.src),
      clip: els.filter((e) => e.tagName === "img").map((e) => e.style.clipPath || ""),
      rows: els.filter((e) => e.tagName === "tr").map((tr) => tr.children.map((td) => td.textContent)),
      text: els.map((e) => e.textContent).filter(Boolean), width: node.size[0],
      titles: els.map((e) => e.title).filter(Boolean) });
  }
  run.original_calls = t.calls.length;
  out.runs.push(run);
}
const calls = process.argv[3] ? JSON.parse(readFileSync(process.argv[3], "utf8")) : [];
out.calls = calls.map(([fn, args]) => mod[fn](...args));
console.log(JSON.stringify(out));
