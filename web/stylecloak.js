// StyleCloak front-end extension for ComfyUI (served from this pack's WEB_DIRECTORY, no dependencies).
//
// Adds what the node graph lacks:
//  * a before/after comparison on "Cloak Image" and "Compare Before / After": drag the slider (or hover the
//    picture) to wipe between the clean and the protected image, with PSNR / SSIM / L-inf of the pair shown;
//  * a report viewer on "Mimicry Test": the verdict, the sanity check and one table row per condition;
//  * on "Cloak Image", "Mimicry Test" and "Purify", the memory mode that ran, the one asked for and any
//    out-of-memory fallbacks ("memory: balanced (asked auto; fell back from fast)").
// The nodes send their data as UI output (keys "stylecloak_compare" and "stylecloak_mimicry", see
// nodes/comfy_glue.py, and "stylecloak_memory": [{asked, ran}], "ran" only where no other key carries the memory
// record of protect_core/memory); missing or malformed data leaves the node as it is and never throws.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const MIMICRY_NODE = "StyleCloak_MimicryTest";
const PURIFY_NODE = "StyleCloak_Purify";

const CSS = `
.stylecloak-box { font: 12px sans-serif; color: var(--input-text, #ddd); display: flex; flex-direction: column;
  gap: 4px; width: 100%; height: 100%; box-sizing: border-box; overflow: hidden; }
.stylecloak-stage { position: relative; flex: 1 1 auto; min-height: 80px; cursor: ew-resize; user-select: none; }
.stylecloak-stage img { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: contain;
  pointer-events: none; }
.stylecloak-line { position: absolute; top: 0; bottom: 0; width: 2px; background: #ffcc33; pointer-events: none; }
.stylecloak-tag { position: absolute; top: 2px; padding: 0 4px; background: rgba(0,0,0,.6); border-radius: 3px;
  pointer-events: none; }
.stylecloak-bar { display: flex; gap: 6px; align-items: center; }
.stylecloak-bar input[type=range] { flex: 1 1 auto; }
.stylecloak-bar button { padding: 0 6px; }
.stylecloak-report { overflow: auto; flex: 1 1 auto; }
.stylecloak-report table { border-collapse: collapse; width: 100%; }
.stylecloak-report th, .stylecloak-report td { border-bottom: 1px solid rgba(128,128,128,.35); padding: 2px 4px;
  text-align: right; white-space: nowrap; }
.stylecloak-report th:first-child, .stylecloak-report td:first-child,
.stylecloak-report td:last-child { text-align: left; }
.stylecloak-report td:last-child { white-space: normal; }
.stylecloak-verdict { font-weight: bold; padding: 2px 4px; border-radius: 3px; }
.stylecloak-good { background: rgba(60,160,90,.35); } .stylecloak-mid { background: rgba(220,160,40,.35); }
.stylecloak-bad { background: rgba(210,70,60,.35); } .stylecloak-none { background: rgba(128,128,128,.3); }
.stylecloak-memory { opacity: .85; border-radius: 3px; overflow-wrap: anywhere; }
.stylecloak-memory.stylecloak-mid { padding: 0 4px; }
.stylecloak-empty { opacity: .6; font-style: italic; padding: 4px; }
`;

function addStyle() {
  if (document.getElementById("stylecloak-style")) return;
  const style = document.createElement("style");
  style.id = "stylecloak-style";
  style.textContent = CSS;
  document.head.appendChild(style);
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// A number for display: fixed digits, "–" when absent or not finite.
export function fmt(value, digits = 3) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

// /view URL of a {filename, subfolder, type} reference from the server, or null when it is not one.
export function viewUrl(ref) {
  if (!ref || typeof ref.filename !== "string" || !ref.filename) return null;
  const q = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder || "", type: ref.type || "temp" });
  return api.apiURL(`/view?${q.toString()}`);
}

// One line of numbers for an image pair ({psnr, ssim, linf_255, ...}).
export function pairSummary(stats) {
  if (!stats || typeof stats !== "object") return "";
  const parts = [];
  if (typeof stats.psnr === "number") parts.push(`PSNR ${fmt(stats.psnr, 2)} dB`);
  if (typeof stats.ssim === "number") parts.push(`SSIM ${fmt(stats.ssim, 4)}`);
  if (typeof stats.linf_255 === "number") parts.push(`L∞ ${fmt(stats.linf_255, 1)}/255`);
  return parts.join(" · ");
}

// ------------------------------------------------------------------------------------------- memory mode
const isRecord = (r) => !!r && typeof r === "object" && !Array.isArray(r);
const fallbackMessages = (record) => (isRecord(record) && Array.isArray(record.fallbacks) ?
  record.fallbacks.map(String) : []);

// Modes a memory record fell back from, in order, read from its out-of-memory messages
// ("... with memory='fast'; retrying with memory='balanced'").
export function fellBackFrom(record) {
  const modes = [];
  for (const msg of fallbackMessages(record)) {
    const m = /with memory='([\w-]+)'; retrying/.exec(msg);
    if (m && !modes.includes(m[1])) modes.push(m[1]);
  }
  return modes;
}

// One line for a memory record ({name, fallbacks, ...}: the mode that ran; null: no model ran) and the mode asked
// for, e.g. "memory: balanced (asked auto; fell back from fast)"; "" when there is nothing to show.
export function memoryLine(record, asked) {
  asked = typeof asked === "string" && asked ? asked : null;
  if (record === null && asked) return `memory: not used (no model ran; asked ${asked})`;
  const ran = isRecord(record) && typeof record.name === "string" && record.name ? record.name : null;
  if (!ran) return asked ? `memory: asked ${asked}` : "";
  const notes = [];
  if (asked && asked !== ran) notes.push(`asked ${asked}`);
  const from = fellBackFrom(record);
  if (from.length) notes.push(`fell back from ${from.join(", ")}`);
  const tiles = fallbackMessages(record).map((msg) => /tiles of at most (\d+) px/.exec(msg)).filter(Boolean);
  if (tiles.length) notes.push(`re-tiled at ${tiles[tiles.length - 1][1]} px`);
  return `memory: ${ran}${notes.length ? ` (${notes.join("; ")})` : ""}`;
}

// Tooltip of the memory line: why that mode (auto's estimate) and every fallback message, one per line (after a
// fallback the record's reason is its last message: said once).
export function memoryTitle(record) {
  if (!isRecord(record)) return "";
  const messages = fallbackMessages(record);
  const reason = typeof record.reason === "string" && record.reason && !messages.includes(record.reason) ?
    [record.reason] : [];
  return [...reason, ...messages].join("\n");
}

// The element showing a memory line ("stylecloak-mid" when it fell back), or null when there is nothing to show.
function memoryElement(record, asked) {
  const text = memoryLine(record, asked);
  if (!text) return null;
  const fell = fellBackFrom(record).length > 0;
  const line = el("div", `stylecloak-memory${fell ? " stylecloak-mid" : ""}`, text);
  line.title = memoryTitle(record);
  return line;
}

// Height (px) and node width each pack widget is given when its node is created, so that the node's default size
// already holds the result and a run does not grow it over its neighbours (example_workflows/ leaves room for it).
export const WIDGET_LAYOUT = {
  stylecloak_compare: { height: 300, width: 320, empty: "run the node to compare before / after" },
  stylecloak_report: { height: 300, width: 760, empty: "run the node to see the Mimicry Test report" },
  stylecloak_memory: { height: 40, width: 320, empty: "" },
};

// Attach (once) a DOM widget to the node; returns the widget (its root element is widget.stylecloakRoot).
function ensureWidget(node, name) {
  let widget = node.widgets?.find((w) => w.name === name);
  if (!widget) {
    const layout = WIDGET_LAYOUT[name];
    const root = el("div", "stylecloak-box");
    if (layout.empty) root.append(el("div", "stylecloak-empty", layout.empty));
    widget = node.addDOMWidget(name, "stylecloak", root, {
      serialize: false, hideOnZoom: false, getMinHeight: () => widget?.stylecloakHeight ?? layout.height,
      getMaxHeight: () => widget?.stylecloakHeight ?? layout.height,
    });
    widget.serialize = false;
    widget.stylecloakRoot = root;
    widget.stylecloakHeight = layout.height;
    fitNode(node, layout.width);
  }
  return widget;
}

// Make the node at least as large as its widgets need (never smaller than it is).
function fitNode(node, minWidth) {
  try {
    const size = node.computeSize();
    const want = [Math.max(node.size[0], size[0], minWidth), Math.max(node.size[1], size[1])];
    if (want[0] !== node.size[0] || want[1] !== node.size[1]) node.setSize(want);
    node.setDirtyCanvas?.(true, true);
  } catch (e) { /* sizing is cosmetic */ }
}

// After the content is drawn: if it needs more height than the widget has, give the widget (and node) that height.
function growToContent(node, widget, minWidth) {
  const measure = () => {
    const root = widget.stylecloakRoot;
    if (!root?.isConnected) return;
    const need = Math.ceil(Math.max(...[...root.children].map((c) => c.scrollHeight + 8), 0));
    if (need > widget.stylecloakHeight) {
      widget.stylecloakHeight = need;
      fitNode(node, minWidth);
    }
  };
  requestAnimationFrame?.(() => requestAnimationFrame(measure));
}

// The node's last result is kept in its properties (saved with the workflow), so that the widget is shown again on
// a cached re-run and when a saved workflow is reopened.
function remember(node, key, message) {
  try {
    node.properties = node.properties || {};
    node.properties[key] = JSON.parse(JSON.stringify(message));
  } catch (e) { /* not JSON: nothing to keep */ }
}

// ------------------------------------------------------------------------------------------- before / after
function showCompare(node, pairs, asked) {
  pairs = (Array.isArray(pairs) ? pairs : []).filter((p) => viewUrl(p?.clean) && viewUrl(p?.protected));
  if (!pairs.length) return;
  const widget = ensureWidget(node, "stylecloak_compare");
  const root = widget.stylecloakRoot;
  root.replaceChildren();
  const stage = el("div", "stylecloak-stage");
  const after = el("img"), before = el("img"), line = el("div", "stylecloak-line");
  const tagBefore = el("span", "stylecloak-tag", "clean"), tagAfter = el("span", "stylecloak-tag", "protected");
  tagBefore.style.left = "2px";
  tagAfter.style.right = "2px";
  stage.append(after, before, line, tagBefore, tagAfter);
  const bar = el("div", "stylecloak-bar");
  const slider = el("input");
  Object.assign(slider, { type: "range", min: 0, max: 100, value: 50, title: "clean ← → protected" });
  const prev = el("button", "", "◀"), next = el("button", "", "▶"), counter = el("span");
  const stats = el("div", "", "");
  const memory = el("div", "stylecloak-memory", "");
  bar.append(prev, counter, next, slider);
  root.append(stage, bar, stats, memory);

  let index = 0;
  const setSplit = (pct) => {
    pct = Math.min(100, Math.max(0, pct));
    before.style.clipPath = `inset(0 ${100 - pct}% 0 0)`;
    line.style.left = `calc(${pct}% - 1px)`;
    slider.value = String(pct);
  };
  const show = (i) => {
    index = (i + pairs.length) % pairs.length;
    const pair = pairs[index];
    before.src = viewUrl(pair.clean);
    after.src = viewUrl(pair.protected);
    counter.textContent = `${index + 1}/${pairs.length}`;
    stats.textContent = pairSummary(pair.stats);
    const shown = memoryElement(pair.stats?.memory, asked);   // per image: batches may run in different modes
    memory.textContent = shown?.textContent ?? "";
    memory.className = shown?.className ?? "stylecloak-memory";
    memory.title = shown?.title ?? "";
    prev.disabled = next.disabled = pairs.length < 2;
  };
  slider.addEventListener("input", () => setSplit(Number(slider.value)));
  stage.addEventListener("pointermove", (e) => {
    const box = stage.getBoundingClientRect();
    if (box.width > 0) setSplit(((e.clientX - box.left) / box.width) * 100);
  });
  prev.addEventListener("click", () => show(index - 1));
  next.addEventListener("click", () => show(index + 1));
  setSplit(50);
  show(0);
  fitNode(node, WIDGET_LAYOUT.stylecloak_compare.width);
}

// ------------------------------------------------------------------------------------------- mimicry report
export function verdictClass(text) {
  const t = String(text || "").toLowerCase();
  if (t.startsWith("protected")) return "stylecloak-good";
  if (t.startsWith("partly")) return "stylecloak-mid";
  if (t.startsWith("not protected")) return "stylecloak-bad";
  return "stylecloak-none";
}

// Table rows [name, trained on, similarity, artist share, success, effect, PSNR, verdict] from a report dict.
export function reportRows(report) {
  const conditions = report && typeof report.conditions === "object" ? report.conditions : {};
  return Object.entries(conditions).map(([name, c]) => {
    c = c || {};
    const sim = c.style_similarity || {};
    const nc = c.nearest_centroid || {};
    const psnr = c.imperceptibility?.psnr?.mean;
    return [name, c.trained_on ?? "–", `${fmt(sim.mean)} ± ${fmt(sim.stderr)}`, fmt(nc.artist_share, 2),
      fmt(nc.protection_success_rate, 2), fmt(c.protection_effect, 2), fmt(psnr, 1), c.verdict || ""];
  });
}

// The judge line: which style embedding scored the test ("style embedding: descriptor" / "clip_vision (...)").
export function judgeLine(report) {
  const judge = isRecord(report?.style_embedding) ? report.style_embedding : {};
  const name = typeof judge.judge === "string" ? judge.judge : report?.embedder;
  const source = typeof judge.source === "string" && judge.source ? ` (${judge.source})` : "";
  return typeof name === "string" && name ? `style embedding: ${name}${source}` : "";
}

function showReport(node, report, asked) {
  if (!report || typeof report !== "object") return;
  const rows = reportRows(report);
  const widget = ensureWidget(node, "stylecloak_report");
  const root = widget.stylecloakRoot;
  root.replaceChildren();
  const box = el("div", "stylecloak-report");
  const verdict = el("div", `stylecloak-verdict ${verdictClass(report.verdict)}`, report.verdict || "no verdict");
  box.append(verdict);
  const sanity = report.sanity_check || {};
  const seconds = typeof report.seconds === "number" ? ` · ${fmt(report.seconds, 1)} s` : "";
  box.append(el("div", "", `sanity check: ${sanity.passed ? "passed" : "not passed"} (gain ${fmt(sanity.gain)}, ` +
    `margin ${fmt(sanity.margin)})${seconds}`));
  if (sanity.diagnosis) box.append(el("div", "", sanity.diagnosis));
  const judge = judgeLine(report);
  if (judge) box.append(el("div", "", judge));
  const memory = memoryElement(report.memory, asked);
  if (memory) box.append(memory);
  const table = el("table");
  const head = el("tr");
  for (const h of ["condition", "trained on", "style similarity", "artist share", "protection success", "effect",
    "PSNR", "verdict"]) head.append(el("th", "", h));
  table.append(head);
  for (const row of rows) {
    const tr = el("tr");
    row.forEach((cell, i) => tr.append(el("td", i === row.length - 1 ? verdictClass(cell) : "", cell)));
    table.append(tr);
  }
  box.append(table);
  const copy = el("button", "", "copy JSON");
  copy.addEventListener("click", () => {
    navigator.clipboard?.writeText(JSON.stringify(report, null, 2))?.catch?.(() => {});  // http on a LAN: no clipboard
  });
  box.append(copy);
  root.append(box);
  fitNode(node, WIDGET_LAYOUT.stylecloak_report.width);
  growToContent(node, widget, WIDGET_LAYOUT.stylecloak_report.width);
}

// ------------------------------------------------------------------------------------------- purify
function showMemory(node, payload) {
  if (!isRecord(payload)) return;
  const line = memoryElement(payload.ran, payload.asked);
  if (!line) return;
  const widget = ensureWidget(node, "stylecloak_memory");
  widget.stylecloakRoot.replaceChildren(line);
  fitNode(node, WIDGET_LAYOUT.stylecloak_memory.width);
  growToContent(node, widget, WIDGET_LAYOUT.stylecloak_memory.width);
}

// ------------------------------------------------------------------------------------------- registration
// The memory mode a run asked for ("stylecloak_memory": [{asked}]), or undefined.
function askedMode(message) {
  const payload = Array.isArray(message.stylecloak_memory) ? message.stylecloak_memory[0] : null;
  return isRecord(payload) ? payload.asked : undefined;
}

// Per node type: its widget and how a UI message fills it.
const HANDLERS = {
  StyleCloak_CloakImage: ["stylecloak_compare", (node, m) => showCompare(node, m.stylecloak_compare, askedMode(m))],
  StyleCloak_ProtectionReport: ["stylecloak_compare",
    (node, m) => showCompare(node, m.stylecloak_compare, askedMode(m))],
  [MIMICRY_NODE]: ["stylecloak_report", (node, m) => showReport(node, m.stylecloak_mimicry?.[0], askedMode(m))],
  [PURIFY_NODE]: ["stylecloak_memory", (node, m) => showMemory(node, m.stylecloak_memory?.[0])],
};
const LAST = "stylecloak_last_output";

function safely(fn) {
  try {
    fn();
  } catch (e) {
    console.warn("[StyleCloak] could not show the node's result", e);
  }
}

function hookNode(nodeType, widgetName, handler) {
  const proto = nodeType.prototype;
  const created = proto.onNodeCreated;
  proto.onNodeCreated = function () {
    const result = created?.apply(this, arguments);
    if (widgetName !== "stylecloak_memory") safely(() => ensureWidget(this, widgetName));  // room from the start
    return result;
  };
  const executed = proto.onExecuted;
  proto.onExecuted = function (message) {
    const result = executed?.apply(this, arguments);
    safely(() => {
      handler(this, message || {});
      remember(this, LAST, message || {});
    });
    return result;
  };
  const configured = proto.onConfigure;
  proto.onConfigure = function () {
    const result = configured?.apply(this, arguments);
    const last = this.properties?.[LAST];
    if (last) safely(() => handler(this, last));   // a reopened workflow shows its last result again
    return result;
  };
}

// A cached re-run (nothing changed) sends no "executed" message for the cached nodes, only "execution_cached" with
// their ids: show each one's remembered result again.
export function showCached(graph, nodeIds) {
  for (const id of Array.isArray(nodeIds) ? nodeIds : []) {
    const node = graph?.getNodeById?.(Number(id)) ?? graph?.getNodeById?.(id);
    const entry = node && HANDLERS[node.type];
    const last = node?.properties?.[LAST];
    if (entry && last) safely(() => entry[1](node, last));
  }
}

app.registerExtension({
  name: "StyleCloak.Frontend",
  setup() {
    api.addEventListener?.("execution_cached", (e) => showCached(app.graph, e?.detail?.nodes));
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const entry = HANDLERS[nodeData?.name];
    if (!entry) return;
    addStyle();
    hookNode(nodeType, ...entry);
  },
});
