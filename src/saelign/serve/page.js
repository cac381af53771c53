// saelign serve: build the controls from /api/info, stream both answers from /api/generate (SSE over fetch).
"use strict";
const $ = (id) => document.getElementById(id);
let info = null, controller = null, debounce = null, generated = false;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k in node) node[k] = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function slider(min, max, step, value) {
  const range = el("input", { type: "range", min, max, step, value });
  const out = el("output", {}, String(value));
  range.addEventListener("input", () => { out.textContent = range.value; });
  return [range, out];
}

function slotRow(slot) {
  const mode = el("select", { class: "mode" }, ...["off", "amplify", "clamp", "swap", "zero"].map(
    (m) => el("option", { value: m }, m === "zero" ? "zero (guard)" : m)));
  const target = el("select", { class: "target", hidden: true },
    ...info.slots.filter((s) => s.concept !== slot.concept).map((s) => el("option", { value: s.concept }, "→ " + s.concept)));
  const [range, out] = slider(-10, 10, 0.1, 1);
  const bar = el("div", { class: "bar" }, el("div", { style: "width:0%" }));
  const row = el("div", { class: "item slot", "data-concept": slot.concept },
    el("div", { class: "name" }, el("span", {}, slot.concept), el("span", { class: "muted value" }, "")), bar,
    el("div", { class: "controls" }, mode, target, range, out));
  mode.addEventListener("change", () => { target.hidden = mode.value !== "swap"; changed(); });
  range.addEventListener("change", () => {
    if (mode.value === "off") { mode.value = "clamp"; }
    changed();
  });
  return row;
}

function featureRow(feature) {
  const mode = el("select", { class: "mode" }, el("option", { value: "add" }, "add"), el("option", { value: "clamp" }, "clamp"));
  const [range, out] = slider(-10, 10, 0.1, 0);
  const row = el("div", { class: "item feature", "data-id": feature.id },
    el("div", { class: "name" }, el("span", {}, `#${feature.id} ${feature.label || ""}`)),
    el("div", { class: "controls" }, mode, range, out));
  mode.addEventListener("change", changed);
  range.addEventListener("change", changed);
  return row;
}

function edits() {
  const slots = [...document.querySelectorAll(".slot")].map((row) => ({
    concept: row.dataset.concept, mode: row.querySelector(".mode").value,
    alpha: Number(row.querySelector("input[type=range]").value), target: row.querySelector(".target").value || null,
  })).filter((e) => e.mode !== "off");
  const features = [...document.querySelectorAll(".feature")].map((row) => ({
    id: Number(row.dataset.id), mode: row.querySelector(".mode").value,
    alpha: Number(row.querySelector("input[type=range]").value),
  })).filter((e) => e.mode === "clamp" || e.alpha !== 0);
  return { slots, features };
}

function request() {
  const sampling = $("sampling").checked;
  return {
    prompt: $("prompt").value, max_new_tokens: Number($("max_new_tokens").value), sampling,
    temperature: Number($("temperature").value), seed: Number($("seed").value), during: $("during").value,
    adapter: $("adapter").checked, ...edits(),
  };
}

function status(text, error = false) { $("status").textContent = text; $("status").className = error ? "error" : "muted"; }

function showInspect(event) {
  const list = $("active");
  list.replaceChildren(...event.features.map((f) => {
    const name = el("span", { class: f.selected ? "sel" : "" }, `#${f.id} ${f.label || "(no label)"}`);
    const link = info.dashboard ? el("a", { href: `/dashboard#latent-${f.id}`, target: "_blank" }, name) : name;
    return el("li", {}, link, el("span", { class: "muted" }, ` ${f.value.toFixed(2)}`));
  }));
  if (!event.features.length) list.replaceChildren(el("li", {}, info.hookpoint ? "no feature fires" : "no SAE loaded"));
  const top = Math.max(1, ...event.slots.map((s) => Math.abs(s.value)));
  for (const s of event.slots) {
    const row = document.querySelector(`.slot[data-concept="${CSS.escape(s.concept)}"]`);
    row.querySelector(".value").textContent = s.value.toFixed(2);
    row.querySelector(".bar div").style.width = `${(100 * Math.abs(s.value)) / top}%`;
  }
}

function describe(req) {
  const parts = [req.adapter ? "adapter on" : "adapter off"];
  const n = req.slots.length + req.features.length;
  if (n) parts.push(`${n} edit${n > 1 ? "s" : ""}`);
  $("modlabel").textContent = `(${parts.join(", ")})`;
}

function compare() {
  const same = $("base").textContent === $("modified").textContent;
  $("diff").textContent = same ? "same as the base answer" : "differs from the base answer";
  $("diff").dataset.state = same ? "same" : "differs";
}

async function generate() {
  if (controller) controller.abort();
  const req = request();
  if (!req.prompt.trim()) { status("type a prompt first", true); return; }
  controller = new AbortController();
  const mine = controller;
  $("base").textContent = ""; $("modified").textContent = ""; $("diff").textContent = ""; $("diff").dataset.state = "";
  describe(req); status("generating…"); $("stop").disabled = false; generated = true;
  try {
    const response = await fetch("/api/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(req), signal: mine.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const detail = Array.isArray(body.detail)
        ? body.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ") : body.detail;
      status(`${response.status}: ${detail || response.statusText}`, true);
      return;
    }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        if (chunk.startsWith("data: ")) handle(JSON.parse(chunk.slice(6)));
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") status(String(err), true);
  } finally {
    if (controller === mine) { controller = null; $("stop").disabled = true; }
  }
}

function handle(event) {
  if (event.event === "inspect") showInspect(event);
  else if (event.event === "token") $(event.side).textContent = event.text;
  else if (event.event === "error") status(event.message, true);
  else if (event.event === "done") {
    const caught = Object.entries(event.guard || {}).map(([c, n]) => `guard ${c}: ${n}×`).join(", ");
    status(`done: ${event.tokens.base} + ${event.tokens.modified} tokens${caught ? "; " + caught : ""}`);
    compare();
  }
}

function changed() {
  if (!generated) return;
  clearTimeout(debounce);
  debounce = setTimeout(generate, 250);
}

function reset() {
  if (controller) controller.abort();
  for (const row of document.querySelectorAll(".slot")) {
    row.querySelector(".mode").value = "off"; row.querySelector(".target").hidden = true;
    const range = row.querySelector("input[type=range]"); range.value = 1; range.dispatchEvent(new Event("input"));
  }
  for (const row of document.querySelectorAll(".feature")) {
    row.querySelector(".mode").value = "add";
    const range = row.querySelector("input[type=range]"); range.value = 0; range.dispatchEvent(new Event("input"));
  }
  $("adapter").checked = false; $("sampling").checked = false; $("seed").value = 0; $("temperature").value = 1;
  $("max_new_tokens").value = Math.min(32, info.limits.max_new_tokens); $("during").value = "all";
  $("base").textContent = ""; $("modified").textContent = ""; $("diff").textContent = ""; $("modlabel").textContent = "";
  generated = false; status("reset");
}

async function start() {
  info = await (await fetch("/api/info")).json();
  $("model").textContent = `${info.model}${info.hookpoint ? " · SAE at " + info.hookpoint : ""}`;
  $("max_new_tokens").max = info.limits.max_new_tokens;
  $("max_new_tokens").value = Math.min(32, info.limits.max_new_tokens);
  $("adapter").disabled = !info.adapter;
  if (info.slots.length) $("slots").replaceChildren(...info.slots.map(slotRow));
  if (info.features.length) $("features").replaceChildren(...info.features.map(featureRow));
  $("slots").classList.toggle("muted", !info.slots.length);
  $("features").classList.toggle("muted", !info.features.length);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => { if (controller) controller.abort(); status("stopped"); });
  $("reset").addEventListener("click", reset);
  $("adapter").addEventListener("change", changed);
  for (const id of ["sampling", "temperature", "seed", "max_new_tokens", "during"]) $(id).addEventListener("change", changed);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
  status("ready");
}

start();
