// pagedserve live dashboard: polls /dashboard/api/stats and /dashboard/api/blocks, draws on canvases.
"use strict";
const COLORS = ["#e8e8e8", "#3b82f6", "#f59e0b", "#10b981", "#a7f3d0"];
const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);
const fmt = (x, d = 1) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

function drawBlocks(canvas, map, countsEl) {
  const n = map ? map.length : 0;
  const width = canvas.parentElement.clientWidth - 4 || canvas.width;
  const cell = n > 20000 ? 3 : n > 4000 ? 5 : n > 1000 ? 8 : 12;
  const cols = Math.max(1, Math.floor(width / cell));
  const rows = Math.max(1, Math.ceil(n / cols));
  canvas.width = cols * cell;
  canvas.height = rows * cell;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const counts = [0, 0, 0, 0, 0];
  for (let i = 0; i < n; i++) {
    const s = map.charCodeAt(i) - 48;
    counts[s]++;
    ctx.fillStyle = COLORS[s];
    ctx.fillRect((i % cols) * cell, Math.floor(i / cols) * cell, cell - 1, cell - 1);
  }
  canvas.dataset.free = counts[0];
  canvas.dataset.used = counts[1];
  canvas.dataset.shared = counts[2];
  canvas.dataset.cached = counts[3] + counts[4];
  canvas.dataset.total = n;
  canvas.dataset.signature = map || "";
  countsEl.textContent = n ? `${n} blocks: ${counts[1]} used, ${counts[2]} shared, ` +
      `${counts[3] + counts[4]} cached prefix, ${counts[0]} free` : "(none)";
}

// Lines (or stacked bars) over x; series: [{values, color}], values may hold nulls.
function drawChart(canvas, xs, series, bars) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 44, B = 18;
  ctx.clearRect(0, 0, W, H);
  let max = 0;
  if (bars) xs.forEach((_, i) => { max = Math.max(max, series.reduce((a, s) => a + (s.values[i] || 0), 0)); });
  else series.forEach((s) => s.values.forEach((v) => { if (v !== null) max = Math.max(max, v); }));
  max = max || 1;
  ctx.fillStyle = "#666"; ctx.font = "11px sans-serif";
  ctx.fillText(max < 10 ? max.toPrecision(2) : Math.round(max), 2, 12);
  ctx.fillText("0", 2, H - B);
  ctx.strokeStyle = "#ddd"; ctx.beginPath(); ctx.moveTo(L, H - B); ctx.lineTo(W, H - B); ctx.stroke();
  const n = xs.length;
  if (!n) { ctx.fillText("no data yet", W / 2 - 30, H / 2); return; }
  const dx = (W - L) / Math.max(n, 1);
  const y = (v) => H - B - (v / max) * (H - B - 16);
  if (bars) {
    xs.forEach((_, i) => {
      let base = 0;
      series.forEach((s) => {
        const v = s.values[i] || 0;
        ctx.fillStyle = s.color;
        ctx.fillRect(L + i * dx, y(base + v), Math.max(1, dx - 1), y(base) - y(base + v));
        base += v;
      });
    });
  } else {
    series.forEach((s) => {
      ctx.strokeStyle = s.color; ctx.lineWidth = 1.5; ctx.beginPath();
      let pen = false;
      s.values.forEach((v, i) => {
        if (v === null) { pen = false; return; }
        const px = L + i * dx + dx / 2;
        if (pen) ctx.lineTo(px, y(v)); else ctx.moveTo(px, y(v));
        pen = true;
      });
      ctx.stroke();
    });
  }
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function pollStats() {
  const s = await getJSON("/dashboard/api/stats");
  const e = s.engine || {};
  $("model").textContent = s.model;
  $("q-running").textContent = e.num_running ?? "–";
  $("q-waiting").textContent = e.num_waiting ?? "–";
  $("q-swapped").textContent = e.num_swapped ?? "–";
  $("preemptions").textContent = e.num_preemptions ?? "–";
  $("kv-gpu").textContent = e.num_total_blocks ? fmt(100 * (1 - e.num_free_blocks / e.num_total_blocks)) + " %" : "–";
  $("kv-cpu").textContent = e.num_total_cpu_blocks ? fmt(100 * (1 - e.num_free_cpu_blocks / e.num_total_cpu_blocks)) + " %" : "–";
  $("prefix-hit").textContent = e.prefix_cache_queries ? fmt(100 * e.prefix_cache_hits / e.prefix_cache_queries) + " %" : "–";
  $("block-size").textContent = e.block_size ? `(${e.block_size} tokens per block)` : "";
  const steps = s.steps || [];
  drawChart($("batch-chart"), steps, [
    { values: steps.map((x) => x.prefill), color: "#8b5cf6" },
    { values: steps.map((x) => x.decode), color: "#3b82f6" }], true);
  // Per-second series over the window, with gaps as zero tokens / no latency sample.
  const now = Math.floor(s.now), secs = [];
  const bySec = new Map((s.series || []).map((x) => [x.t, x]));
  for (let t = now - Math.min(s.window_s || 300, 300) + 1; t <= now; t++) secs.push(bySec.get(t) || { t });
  drawChart($("tps-chart"), secs, [
    { values: secs.map((x) => x.prompt_tps ?? 0), color: "#8b5cf6" },
    { values: secs.map((x) => x.gen_tps ?? 0), color: "#3b82f6" }], false);
  drawChart($("ttft-chart"), secs, [
    { values: secs.map((x) => x.ttft_p50 ?? null), color: "#10b981" },
    { values: secs.map((x) => x.ttft_p90 ?? null), color: "#ef4444" }], false);
  drawChart($("itl-chart"), secs, [
    { values: secs.map((x) => x.itl_p50 ?? null), color: "#10b981" },
    { values: secs.map((x) => x.itl_p90 ?? null), color: "#ef4444" }], false);
  const recent = secs.slice(-5).map((x) => x.gen_tps || 0);
  $("gen-tps").textContent = fmt(recent.reduce((a, b) => a + b, 0) / recent.length);
}

async function pollBlocks() {
  const m = await getJSON("/dashboard/api/blocks");
  drawBlocks($("block-map-gpu"), m.gpu || "", $("gpu-counts"));
  drawBlocks($("block-map-cpu"), m.cpu || "", $("cpu-counts"));
}

async function tick() {
  try {
    await Promise.all([pollStats(), pollBlocks()]);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.ticks = String(Number(document.body.dataset.ticks || 0) + 1);
  } catch (err) {
    $("updated").textContent = "disconnected: " + err.message;
  }
  setTimeout(tick, POLL_MS);
}
tick();
