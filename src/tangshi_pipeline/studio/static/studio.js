// The poem studio page: the form → POST /api/poems → ranked, annotated poems. No library, no build.
// The URL's query string holds every setting of the last poems (the permalink): opening it writes
// the same poems again.
"use strict";

const FORM_NAMES = { free: "自由", wujue: "五言绝句", qijue: "七言绝句", wulv: "五言律诗", qilv: "七言律诗" };
const NUMBERS = ["temperature", "top_p", "top_k", "beam_size", "num_samples", "max_length", "no_repeat_ngram", "seed"];
const TONE_CLASS = { "平": "ping", "仄": "ze", "○": "either" };
const $ = (id) => document.getElementById(id);
let last = null; // the last response, re-rendered when the script switch changes

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function script() {
  return document.querySelector('input[name="script"]:checked').value;
}

// ---------------------------------------------------------------------------------- form ↔ body

function body() {
  const f = $("settings").elements;
  const out = {
    form: f.form.value,
    strategy: f.strategy.value,
    tones: f.tones.checked ? "strict" : "loose",
    rhyme: f.rhyme.checked,
    no_copy: f.no_copy.checked,
  };
  if (out.form === "free") { out.tones = "loose"; out.rhyme = false; out.no_copy = false; }
  out.acrostic = f.acrostic.value.trim() || null;  // an acrostic replaces the begin character
  if (f.begin_words.value.trim()) out.begin_words = [f.begin_words.value.trim()];
  out.keywords = words(f.keywords.value);
  for (const name of NUMBERS) {
    if (name === "beam_size" && out.strategy !== "beam") continue;  // the beam size is beam's alone
    const value = f[name].value.trim();
    if (value !== "") out[name] = Number(value);
  }
  return out;
}

function fill(settings) {
  const f = $("settings").elements;
  if (settings.form) f.form.value = settings.form;
  if (settings.strategy) f.strategy.value = settings.strategy;
  if ("tones" in settings) f.tones.checked = settings.tones === "strict";
  if ("rhyme" in settings) f.rhyme.checked = settings.rhyme === true || settings.rhyme === "true";
  if ("no_copy" in settings) f.no_copy.checked = settings.no_copy === true || settings.no_copy === "true";
  if ("acrostic" in settings) f.acrostic.value = settings.acrostic || "";
  if ("keywords" in settings) f.keywords.value = [].concat(settings.keywords).join(" ");
  if (settings.begin_words) f.begin_words.value = [].concat(settings.begin_words).join("").slice(0, 1);
  for (const name of NUMBERS) if (name in settings && settings[name] !== null) f[name].value = settings[name];
  rulesFollowForm();
  beamSizeFollowsStrategy();
}

// The permalink: every setting the server used, plus the script.
function query(settings) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(settings)) {
    if (v === null || v === undefined) continue;
    if (k === "keywords" && !v.length) continue;
    q.set(k, Array.isArray(v) ? v.join(k === "keywords" ? " " : "") : String(v));
  }
  if (script() === "t") q.set("script", "t");
  return q.toString();
}

// The query string → the request body it stands for (typed as the API wants it).
function fromQuery(search) {
  const settings = {};
  for (const [k, v] of new URLSearchParams(search)) {
    if (k === "begin_words") settings[k] = Array.from(v);
    else if (NUMBERS.includes(k)) settings[k] = Number(v);
    else if (v === "true" || v === "false") settings[k] = v === "true";
    else if (k === "acrostic") settings[k] = v || null;
    else if (k === "keywords") settings[k] = words(v);
    else settings[k] = v;
  }
  return settings;
}

// Theme keywords as typed ("秋 月", "秋，月"): separated by spaces or commas.
function words(text) {
  return text.split(/[\s,，、]+/).filter(Boolean);
}

// ------------------------------------------------------------------------------------ requests

function clearErrors() {
  for (const node of document.querySelectorAll(".error")) node.textContent = "";
  for (const node of document.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
}

function showErrors(problems) {
  const lines = [];
  for (const p of problems) {
    const box = $(`${p.field}-error`) || $("body-error");
    box.textContent = box.textContent ? `${box.textContent} ${p.msg}` : p.msg;
    const input = $(p.field);
    if (input) input.setAttribute("aria-invalid", "true");
    lines.push(p.msg);
  }
  $("status").textContent = `Not written: ${lines.join("; ")}`;
  const first = problems.map((p) => $(p.field)).find(Boolean);
  if (first) first.focus();
}

async function write(event, request) {
  if (event) event.preventDefault();
  clearErrors();
  const results = $("results");
  results.setAttribute("aria-busy", "true");
  $("write").disabled = true;
  $("status").textContent = "写诗中… writing";
  try {
    const response = await fetch("/api/poems", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request || body()),
    });
    const data = await response.json().catch(() => ({}));
    if (response.status === 422 || response.status === 413) {
      showErrors(data.detail || []);
      return;
    }
    if (!response.ok) {
      $("status").textContent = `The server answered ${response.status}: ${typeof data.detail === "string" ? data.detail : ""}`;
      return;
    }
    last = data;
    fill(data.settings);
    const permalink = "?" + query(data.settings);
    history.replaceState(null, "", permalink);
    $("permalink").href = permalink;
    $("permalink").hidden = false;
    render();
  } catch (error) {
    $("status").textContent = `No answer from the server (${error.message}).`;
  } finally {
    results.setAttribute("aria-busy", "false");
    $("write").disabled = false;
  }
}

// ------------------------------------------------------------------------------------ rendering

function charCell(c, trad) {
  const tone = TONE_CLASS[c.tone] || "unknown";
  const classes = ["ch", tone];
  if (c.fits === false || (c.rhyme && !c.rhyme.ok)) classes.push("failing");
  if (c.rhyme) classes.push("rhymes");
  const notes = [`${c.char}: ${c.tone || "tone unknown"}`];
  if (c.required) notes.push(`template ${c.required === "*" ? "either" : c.required}`);
  if (c.fits === false) notes.push("breaks the template");
  if (c.rhyme) notes.push(`rhyme ${c.rhyme.groups.join(" / ") || "no level-tone group"}${c.rhyme.ok ? "" : ", does not rhyme"}`);
  return el("span", { class: classes.join(" "), title: notes.join(" · "), "data-char": c.char },
    el("span", { class: "req", "aria-hidden": "true", text: c.required && c.required !== "*" ? c.required : "" }),
    el("span", { class: "c", text: trad ? c.traditional : c.char }),
    el("span", { class: "t", "aria-hidden": "true", text: c.tone || "?" }),
    c.rhyme ? el("span", { class: "rg", "aria-hidden": "true", text: (c.rhyme.groups[0] || "—").replace(/^[上下]平/, "") }) : null);
}

function verdictText(v, form) {
  if (v.form === "free") return form === "free" ? "自由体 free verse" : "格式不符 wrong shape";
  const parts = [`${FORM_NAMES[v.form]} ${v.template || ""}`.trim()];
  parts.push(v.format ? "格式 ✓" : "格式 ✗");
  parts.push(`平仄 ${v.tones ? "✓" : "✗"} ${v.tone_matches}/${v.tone_positions}`);
  parts.push(`押韵 ${v.rhyme ? "✓" : "✗"}${v.rhyme_group ? " " + v.rhyme_group : ""}${v.rhyme_repeated ? " 重韵" : ""}`);
  return parts.join(" · ");
}

function poemItem(p, copies, form, trad) {
  const item = el("li", { class: "poem", "data-rank": p.rank, "data-index": p.index });
  const head = el("div", { class: "poem-head" },
    el("span", { class: "rank", text: `#${p.rank}` }),
    el("span", { class: "score", title: "mean log-probability per character (nats)", text: `${p.score.toFixed(3)} / 字` }),
    copies > 1 ? el("span", { class: "copies", text: `×${copies}` }) : null,
    el("span", { class: `verdict ${p.verdict.failing.length ? "bad" : "good"}`, text: verdictText(p.verdict, form) }));
  item.append(head);
  const body = el("div", { class: "poem-body", lang: trad ? "zh-Hant" : "zh-Hans" });
  for (const line of p.lines) {
    const row = el("div", { class: "line", "aria-label": (trad ? line.traditional : line.text) + line.punctuation });
    for (const c of line.chars) row.append(charCell(c, trad));
    if (line.punctuation) row.append(el("span", { class: "punct", "aria-hidden": "true", text: line.punctuation }));
    body.append(row);
    if (line.copied_from.length) {
      const sources = line.copied_from.map((s) => `《${s.title}》${s.author}`).join("、");
      body.append(el("p", { class: "copied", text: `⚠ 此句见于训练集 copied from the training split: ${sources}` }));
    }
  }
  item.append(body);
  if (p.verdict.failing.length) {
    const where = p.verdict.failing.map(([i, j]) => `${i + 1}.${j + 1}`).join(", ");
    item.append(el("p", { class: "failing-list", text: `不合 breaks the rules at line.position ${where}` }));
  }
  if (p.fallbacks) item.append(el("p", { class: "note", text: `${p.fallbacks} step(s) had no legal character: shape only there` }));
  return item;
}

function render() {
  if (!last) return;
  const trad = script() === "t";
  const list = $("poems");
  list.replaceChildren();
  const seen = new Map();
  for (const p of last.poems) seen.set(p.text, (seen.get(p.text) || 0) + 1);
  const shown = new Set();
  for (const p of last.poems) {
    if (shown.has(p.text)) continue;
    shown.add(p.text);
    list.append(poemItem(p, seen.get(p.text), last.settings.form, trad));
  }
  const s = last.settings;
  const how = s.strategy === "sample" ? `sampled, T ${s.temperature}, top-p ${s.top_p}, seed ${s.seed}`
    : s.strategy === "beam" ? `beam search, beam size ${s.beam_size}` : "greedy";
  $("status").textContent = `${last.poems.length} ${FORM_NAMES[s.form]} (${how}) in ${Math.round(last.seconds * 1000)} ms, best first — model ${last.model}`;
  $("results-title").focus();
}

async function showModel() {
  try {
    const data = await (await fetch("/api/models")).json();
    const served = data.versions.find((v) => v.served) || {};
    const ppl = served.metrics && served.metrics.val_perplexity;
    $("model").textContent = `model ${data.served}${ppl ? ` · validation perplexity ${ppl.toFixed(1)}` : ""}`;
  } catch (error) {
    $("model").textContent = "";
  }
}

// Tones, rhyme and no_copy need a regular form: off (and greyed) for free verse.
function rulesFollowForm() {
  const free = $("settings").elements.form.value === "free";
  for (const id of ["tones", "rhyme", "no_copy"]) $(id).disabled = free;
}

// The beam size field: shown (and sent) only for beam search.
function beamSizeFollowsStrategy() {
  const beam = $("settings").elements.strategy.value === "beam";
  $("beam-field").hidden = !beam;
  $("beam_size").disabled = !beam;
}

document.addEventListener("DOMContentLoaded", () => {
  $("settings").addEventListener("submit", write);
  for (const radio of document.querySelectorAll('input[name="form"]')) radio.addEventListener("change", rulesFollowForm);
  for (const radio of document.querySelectorAll('input[name="strategy"]')) radio.addEventListener("change", beamSizeFollowsStrategy);
  $("reseed").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 1e9); });
  for (const radio of document.querySelectorAll('input[name="script"]')) {
    radio.addEventListener("change", () => {
      render();
      if (last) history.replaceState(null, "", "?" + query(last.settings));
    });
  }
  showModel();
  const settings = fromQuery(location.search);
  if (settings.script === "t") document.querySelector('input[name="script"][value="t"]').checked = true;
  delete settings.script;
  if (Object.keys(settings).length) {  // a permalink: exactly its settings, whatever the form shows
    fill(settings);
    write(null, settings);
  }
});
