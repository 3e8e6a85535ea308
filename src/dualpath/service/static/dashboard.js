// The dualpath dashboard: polls /telemetry, draws the decision mix and the c_max histogram as inline
// SVG, and runs generations through the streaming endpoint. No dependencies, no build step.
// Text from the server is only ever set with textContent, never parsed as HTML.
"use strict";

const DECISIONS = ["SNAP", "BLEND", "NOVEL", "NOVEL_DUP_DROP"];
const DECISION_COLOURS = { SNAP: "#2e9e5b", BLEND: "#2a8fbd", NOVEL: "#d99a1e", NOVEL_DUP_DROP: "#b04a9f" };
const LANE_COLOURS = ["#1d2430", "#c0392b", "#6c5ce7", "#00897b", "#8d6e63", "#e67e22", "#546e7a", "#ad1457"];
const POLL_MS = 2000;
const RECENT_ROWS = 40;
const SVG_NS = "http://www.w3.org/2000/svg"; // an XML namespace name, not a URL that is fetched

const $ = (id) => document.getElementById(id);
let info = null;
let lastSeen = 0;

// -- small helpers ---------------------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return response;
}

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const pill = (decision) => el("span", { class: `pill ${decision}` }, decision === "NOVEL_DUP_DROP" ? "DUP_DROP" : decision);
const laneColour = (name) => LANE_COLOURS[Object.keys(info.lanes).indexOf(name) % LANE_COLOURS.length];

function cell(row, content, cls = "") {
  const td = el("td", cls ? { class: cls } : {});
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  row.appendChild(td);
}

// -- set-up ----------------------------------------------------------------------------------------

async function init() {
  info = await (await api("/info")).json();
  const b = info.bank;
  $("bank-info").textContent =
    `${b.concepts.toLocaleString()} concepts · ${b.documents} documents · ${b.dim}-d ${b.encoder} · ` +
    `LVM ${info.models.lvm} · query from ${info.models.query_source}`;
  const lanes = Object.values(info.lanes);
  for (const lane of lanes) {
    const option = el("option", { value: lane.name }, lane.name + (lane.calibrated ? "" : " (uncalibrated)"));
    if (lane.name === info.default_lane) option.selected = true;
    $("lane").appendChild(option);
  }
  $("steps").max = info.limits.max_steps;
  $("steps").value = info.limits.default_steps;
  $("prompt").maxLength = info.limits.max_prompt_chars;
  $("lane").addEventListener("change", showLane);
  $("hist-lane").addEventListener("change", poll);
  $("prompt-form").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
  const legend = $("legend");
  for (const d of DECISIONS) {
    const item = el("span", {}, d);
    item.style.setProperty("--swatch", DECISION_COLOURS[d]);
    legend.appendChild(item);
  }
  showLane();
  poll();
}

function showLane() {
  const lane = info.lanes[$("lane").value];
  const on = lane.rule === "confidence" ? "p" : "c";
  $("lane-info").textContent =
    `SNAP at ${on} ≥ ${fmt(lane.tau_snap)} · NOVEL at ${on} ≤ ${fmt(lane.tau_novel)} · K ${lane.k}` +
    (lane.calibrated ? " · calibrated on this bank" : " · uncalibrated defaults");
}

// -- live telemetry --------------------------------------------------------------------------------

let pollTimer = null;

async function poll() {
  clearTimeout(pollTimer);
  try {
    const telemetry = await (await api(`/telemetry?limit=${RECENT_ROWS}`)).json();
    drawMix(telemetry.summary.lanes, telemetry.kept);
    drawHistogram(telemetry.c_max_histogram);
    fillRecent(telemetry);
    $("status").className = "status live";
    $("status").title = "live: polling /telemetry";
  } catch (err) {
    $("status").className = "status down";
    $("status").title = `telemetry unavailable: ${err.message}`;
  }
  pollTimer = setTimeout(poll, document.hidden ? POLL_MS * 5 : POLL_MS);
}

function drawMix(lanes, kept) {
  const chart = $("mix-chart");
  chart.replaceChildren();
  const names = Object.keys(lanes);
  $("mix-count").textContent = kept ? `(last ${kept} steps)` : "";
  const width = 520, rowHeight = 28, labelWidth = 150, barWidth = width - labelWidth - 70;
  const height = Math.max(1, names.length) * rowHeight + 8;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  if (!names.length) {
    chart.appendChild(svg("text", { x: 0, y: 18, class: "empty" }, "no steps yet: run a generation"));
    return;
  }
  names.forEach((name, i) => {
    const summary = lanes[name];
    const y = i * rowHeight + 4;
    chart.appendChild(svg("text", { x: 0, y: y + 15 }, name));
    let x = labelWidth;
    for (const d of DECISIONS) {
      const share = summary.decisions[d].share;
      if (share <= 0) continue;
      const w = share * barWidth;
      const rect = svg("rect", { x, y, width: w, height: rowHeight - 8, fill: DECISION_COLOURS[d] });
      rect.appendChild(svg("title", {}, `${name} ${d}: ${summary.decisions[d].count} (${(share * 100).toFixed(1)}%)`));
      chart.appendChild(rect);
      if (w > 34) {
        chart.appendChild(svg("text", { x: x + 4, y: y + 14, fill: "#fff", style: "fill:#fff" }, `${Math.round(share * 100)}%`));
      }
      x += w;
    }
    chart.appendChild(svg("text", { x: labelWidth + barWidth + 6, y: y + 15, class: "empty" }, `${summary.count} steps`));
  });
}

function drawHistogram(histogram) {
  const chart = $("hist-chart");
  chart.replaceChildren();
  const select = $("hist-lane");
  for (const name of Object.keys(histogram.lanes)) {
    if (![...select.options].some((o) => o.value === name)) select.appendChild(el("option", { value: name }, name));
  }
  const shown = select.value ? [select.value] : Object.keys(histogram.lanes);
  const edges = histogram.edges;
  const bins = edges.length - 1;
  const counts = DECISIONS.map((d) => {
    const total = new Array(bins).fill(0);
    for (const lane of shown) (histogram.lanes[lane]?.[d] || []).forEach((c, i) => { total[i] += c; });
    return total;
  });
  const stacked = new Array(bins).fill(0).map((_, i) => counts.reduce((s, c) => s + c[i], 0));
  // Only the quota lanes' thresholds are cosines; confidence lanes set levels of p.
  const thresholds = shown.filter((n) => info.lanes[n] && info.lanes[n].rule !== "confidence").map((n) => info.lanes[n]);

  // Zoom the x axis on where the data and the thresholds are, in steps of 0.1.
  let lo = 1, hi = 0;
  stacked.forEach((c, i) => { if (c) { lo = Math.min(lo, edges[i]); hi = Math.max(hi, edges[i + 1]); } });
  for (const t of thresholds) { lo = Math.min(lo, t.tau_novel); hi = Math.max(hi, t.tau_snap); }
  if (lo >= hi) { lo = 0; hi = 1; }
  lo = Math.max(0, Math.floor(lo * 10 - 0.5) / 10);
  hi = Math.min(1, Math.ceil(hi * 10 + 0.5) / 10);

  const width = 520, height = 220, left = 34, right = 10, top = 14 + thresholds.length * 12, bottom = 24;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const plotW = width - left - right, plotH = height - top - bottom;
  const xOf = (v) => left + ((v - lo) / (hi - lo)) * plotW;
  const peak = Math.max(1, ...stacked);
  const yOf = (c) => top + plotH - (c / peak) * plotH;

  for (let t = Math.ceil(lo * 10) / 10; t <= hi + 1e-9; t += 0.1) {
    chart.appendChild(svg("line", { x1: xOf(t), x2: xOf(t), y1: top, y2: top + plotH, class: "grid" }));
    chart.appendChild(svg("text", { x: xOf(t), y: height - 8, "text-anchor": "middle" }, t.toFixed(1)));
  }
  chart.appendChild(svg("line", { x1: left, x2: left + plotW, y1: top + plotH, y2: top + plotH, class: "axis" }));
  chart.appendChild(svg("text", { x: left - 4, y: top + 4, "text-anchor": "end" }, String(peak)));
  chart.appendChild(svg("text", { x: left - 4, y: top + plotH, "text-anchor": "end" }, "0"));

  for (let i = 0; i < bins; i++) {
    if (!stacked[i] || edges[i + 1] <= lo || edges[i] >= hi) continue;
    let base = 0;
    DECISIONS.forEach((d, j) => {
      const c = counts[j][i];
      if (!c) return;
      const x = xOf(edges[i]) + 0.5, w = Math.max(1, xOf(edges[i + 1]) - xOf(edges[i]) - 1);
      const rect = svg("rect", { x, y: yOf(base + c), width: w, height: yOf(base) - yOf(base + c), fill: DECISION_COLOURS[d] });
      rect.appendChild(svg("title", {}, `c_max ${edges[i].toFixed(2)}–${edges[i + 1].toFixed(2)}: ${c} ${d}`));
      chart.appendChild(rect);
      base += c;
    });
  }
  // Per lane, above the plot: its BLEND band [τ_novel, τ_snap], with dashed lines down through the bars.
  thresholds.forEach((lane, i) => {
    const colour = laneColour(lane.name);
    const y = 8 + i * 12;
    const x0 = xOf(lane.tau_novel), x1 = xOf(lane.tau_snap);
    const band = svg("line", { x1: x0, x2: x1, y1: y, y2: y, stroke: colour, "stroke-width": 3 });
    band.appendChild(svg("title", {}, `${lane.name}: τ_novel ${lane.tau_novel.toFixed(3)}, τ_snap ${lane.tau_snap.toFixed(3)}`));
    chart.appendChild(band);
    for (const x of [x0, x1]) {
      chart.appendChild(svg("line", {
        x1: x, x2: x, y1: y, y2: top + plotH, stroke: colour, "stroke-width": 1.2, "stroke-dasharray": "4 3",
      }));
    }
    const label = `${lane.name} ${lane.tau_novel.toFixed(2)}–${lane.tau_snap.toFixed(2)}`;
    const onLeft = x0 - left > 110;
    chart.appendChild(svg("text", {
      x: onLeft ? x0 - 4 : x1 + 4, y: y + 4, "text-anchor": onLeft ? "end" : "start", style: `fill:${colour}`,
    }, label));
  });
  if (!stacked.some((c) => c)) {
    chart.appendChild(svg("text", { x: left + 8, y: top + plotH / 2, class: "empty" }, "no c_max values yet"));
  }
}

// Where a step's candidate came from, with every feature of its SNAP confidence on hover.
function evidence(record) {
  if (!record.candidate_source) return "–";
  const span = el("span", { class: "evidence" }, record.candidate_source);
  if (record.evidence) {
    span.title = Object.entries(record.evidence).map(([k, v]) => `${k} ${Number(v).toFixed(3)}`).join("\n");
  }
  return span;
}

// Why a step had no candidate (as `dualpath generate` says it): refused candidates are not a failed retrieval.
// A step's own time: its total less the prompt's encoding, which the first step's total also carries
// (the CLI's step_ms).
function stepMs(latency) {
  return latency.total - (latency.encode || 0);
}

function fallbackNote(record) {
  const used = record.skipped_used || 0;
  const said = record.skipped_paraphrases || 0;
  if (record.fallback_reason !== "empty" || used + said === 0) return `retrieval: ${record.fallback_reason}`;
  const refused = [];
  if (used) refused.push(`${used} already shown`);
  if (said) refused.push(`${said} paraphrase${said === 1 ? "" : "s"} of what was said`);
  return `every candidate refused: ${refused.join(", ")}`;
}

function fillRecent(telemetry) {
  const body = $("recent-table").querySelector("tbody");
  const records = telemetry.records;
  $("recent-count").textContent = `(${telemetry.recorded} recorded since start)`;
  body.replaceChildren();
  records.slice().reverse().forEach((r, i) => {
    const ordinal = telemetry.recorded - i;
    const row = el("tr", ordinal > lastSeen && lastSeen > 0 ? { class: "fresh" } : {});
    cell(row, String(r.step), "num");
    cell(row, r.lane);
    cell(row, pill(r.decision));
    cell(row, fmt(r.c_max), "num");
    cell(row, fmt(r.confidence), "num");
    cell(row, evidence(r));
    cell(row, fmt(r.alpha, 2), "num");
    cell(row, r.neighbour_text === null ? "–" : r.neighbour_text);
    const notes = [];
    if (r.near_dup) notes.push("near-duplicate");
    if (r.fallback_reason) notes.push(fallbackNote(r));
    cell(row, notes.join(", "));
    body.appendChild(row);
  });
  lastSeen = telemetry.recorded;
}

// -- a generation, streamed ------------------------------------------------------------------------

function parseEvents(buffer, onEvent) {
  // Server-sent events: frames separated by a blank line, each with `event:` and `data:` lines.
  const frames = buffer.split("\n\n");
  const rest = frames.pop();
  for (const frame of frames) {
    let event = "message", data = "";
    for (const line of frame.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).trim();
    }
    onEvent(event, data ? JSON.parse(data) : {});
  }
  return rest;
}

function showPromptMatches(matches) {
  // Each prompt sentence beside its nearest bank concept: those marked said are the prompt's own, never shown.
  const box = $("prompt-matches");
  const body = box.querySelector("tbody");
  body.replaceChildren();
  for (const m of matches) {
    const row = el("tr");
    cell(row, m.sentence);
    cell(row, m.text === null ? "nothing" : m.text);
    cell(row, fmt(m.cosine, 2), "num");
    cell(row, m.said ? "said" : "");
    body.appendChild(row);
  }
  $("prompt-matches-note").textContent =
    `each sentence's nearest concept; at cos ≥ ${fmt(info.prompt_anchor_cosine, 2)} it counts as said and is never shown`;
  box.hidden = matches.length === 0;
}

async function generate() {
  const button = $("run");
  const error = $("run-error");
  const body = $("stream-table").querySelector("tbody");
  button.disabled = true;
  error.hidden = true;
  body.replaceChildren();
  $("stream-text").textContent = "";
  $("prompt-matches").hidden = true;
  const texts = [];
  const onEvent = (event, data) => {
    if (event === "start") {
      showPromptMatches(data.prompt || []);
    } else if (event === "step") {
      const row = el("tr", { class: "fresh" });
      cell(row, String(data.step), "num");
      cell(row, pill(data.decision));
      cell(row, fmt(data.c_max), "num");
      cell(row, fmt(data.confidence), "num");
      cell(row, evidence(data));
      cell(row, fmt(data.alpha, 2), "num");
      const text = el("span", data.approximate ? { class: "approx" } : {}, (data.approximate ? "≈ " : "") + data.text);
      if (data.fallback_reason) text.title = fallbackNote(data);
      cell(row, text);
      cell(row, fmt(stepMs(data.stage_latency_ms), 0), "num");
      if (data.stage_latency_ms.encode) {
        row.lastChild.title = `the step's own time; the prompt was encoded in ${fmt(data.stage_latency_ms.encode, 0)} ms before it`;
      }
      body.appendChild(row);
      texts.push(data.text);
      $("stream-text").textContent = texts.join(" ");
    } else if (event === "error") {
      throw new Error(data.detail);
    }
  };
  try {
    const response = await api("/generate/stream", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ prompt: $("prompt").value, steps: Number($("steps").value), lane: $("lane").value }),
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + decoder.decode(value, { stream: true }), onEvent);
    }
  } catch (err) {
    error.textContent = err.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
    poll();
  }
}

init().catch((err) => {
  $("bank-info").textContent = `cannot load /info: ${err.message}`;
  $("status").className = "status down";
});
