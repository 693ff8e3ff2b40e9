"""Render recorded benchmark results as markdown tables and PNG plots.

Reads the JSON lines under benchmarks/results/ (throughput, hf_baseline, serving, sharing) and
writes `report.md` plus two plots into `--out-dir`:

- `serving_latency.png`: latency against achieved throughput across request rates (normalized
  latency, the PagedAttention paper's s/token metric, and TPOT p50/p99), one line per server run set;
- `throughput_per_workload.png`: engine output tok/s beside the HF static-batching baseline, and
  total tok/s beside the measured matmul roofline, per workload.

    python benchmarks/report.py [--results-dir benchmarks/results] [--out-dir DIR] [--all]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import OrderedDict
from typing import Any, Callable, Iterable, Optional, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.record import RESULTS_DIR

Record = dict[str, Any]


def load_results(paths: Iterable[str]) -> list[Record]:
    """Records from .jsonl files or folders of them; malformed lines are skipped."""
    files: list[str] = []
    for p in paths:
        files.extend(sorted(glob.glob(os.path.join(p, "*.jsonl"))) if os.path.isdir(p) else [p])
    out = []
    for path in files:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "bench" in rec and "metrics" in rec:
                    out.append(rec)
    return sorted(out, key=lambda r: r.get("date", ""))


def latest(records: Sequence[Record], key: Callable[[Record], Any]) -> list[Record]:
    """The most recent record per key (records are date-sorted), in first-seen key order."""
    best: "OrderedDict[Any, Record]" = OrderedDict()
    for r in records:
        best[key(r)] = r
    return list(best.values())


def _fmt(val: Any, spec: str = "{:.1f}") -> str:
    if val is None or val == "":
        return "–"
    if isinstance(val, (int, float)) and not isinstance(val, bool):
        return spec.format(val)
    return str(val)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _short(rec: Record) -> tuple[str, str]:
    return rec.get("date", "")[:10], str(rec.get("git_sha", ""))[:10]


def _tput_key(r: Record) -> tuple:
    p = r["params"]
    return (r.get("device"), p.get("workload"), p.get("model"), p.get("n", 1),
            p.get("beam_width", 1), p.get("num_requests"))


def throughput_table(records: Sequence[Record], hf: Sequence[Record]) -> str:
    rows = []
    for r in records:
        p, m = r["params"], r["metrics"]
        hf_tok, hf_frac = hf_for(r, hf)
        speedup = m.get("speedup_vs_hf") or (m["output_tok_s"] / hf_tok
                                             if hf_tok and m.get("output_tok_s") else None)
        rows.append([*_short(r), r.get("device", ""), p.get("workload", ""), p.get("model", ""),
                     f"{p.get('n', 1)}/{p.get('beam_width', 1)}", _fmt(p.get("num_requests"), "{}"),
                     _fmt(m.get("requests_s"), "{:.2f}"), _fmt(m.get("output_tok_s")),
                     _fmt(m.get("total_tok_s")), _fmt(m.get("roofline_fraction"), "{:.3f}"),
                     _fmt(hf_tok), _fmt(hf_frac, "{:.0%}"), _fmt(speedup, "{:.1f}x"),
                     _fmt(m.get("kv_waste_pct"), "{:.1f}%"),
                     _fmt(m.get("peak_running_requests"), "{}"), _fmt(m.get("preemptions"), "{}")])
    return _table(["date", "git", "device", "workload", "model", "n/beam", "requests", "req/s",
                   "out tok/s", "total tok/s", "roofline", "HF out tok/s", "HF share", "speedup",
                   "KV waste", "peak running", "preempt"], rows)


def hf_for(rec: Record, hf: Sequence[Record]) -> tuple[Optional[float], Optional[float]]:
    """HF output tok/s and workload share for a throughput record: its own, else a matching run."""
    m = rec["metrics"]
    if m.get("hf_output_tok_s"):
        return m["hf_output_tok_s"], m.get("hf_fraction")
    p = rec["params"]
    for h in reversed(hf):
        hp = h["params"]
        if (h.get("device") == rec.get("device") and hp.get("workload") == p.get("workload")
                and hp.get("model") == p.get("model") and hp.get("n", 1) == p.get("n", 1)
                and hp.get("beam_width", 1) == p.get("beam_width", 1)):
            return h["metrics"].get("hf_output_tok_s"), h["metrics"].get("hf_fraction")
    return None, None


def serving_table(records: Sequence[Record]) -> str:
    rows = []
    for r in records:
        p, m = r["params"], r["metrics"]
        rows.append([*_short(r), r.get("device", ""), p.get("workload", ""), str(p.get("model", "")),
                     _fmt(p.get("request_rate"), "{:g}"), _fmt(p.get("max_concurrency"), "{}"),
                     _fmt(m.get("requests_s"), "{:.2f}"), _fmt(m.get("output_tok_s")),
                     _fmt(m.get("ttft_p50_ms")), _fmt(m.get("ttft_p99_ms")),
                     _fmt(m.get("tpot_p50_ms")), _fmt(m.get("tpot_p99_ms")),
                     _fmt(m.get("itl_p50_ms")), _fmt(m.get("e2e_p50_ms")), _fmt(m.get("e2e_p99_ms")),
                     _fmt(m.get("num_errors"), "{}")])
    return _table(["date", "git", "device", "workload", "model", "rate", "max conc", "req/s",
                   "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms",
                   "ITL p50 ms", "e2e p50 ms", "e2e p99 ms", "errors"], rows)


def sharing_table(records: Sequence[Record]) -> str:
    rows = []
    for r in records:
        p, m = r["params"], r["metrics"]
        rows.append([*_short(r), r.get("device", ""), str(p.get("model", "")), p.get("mode", ""),
                     _fmt(p.get("width"), "{}"), _fmt(m.get("sharing_saved_pct"), "{:.1f}%"),
                     _fmt(m.get("peak_sharing_saved_pct"), "{:.1f}%"),
                     _fmt(m.get("kv_waste_pct"), "{:.1f}%"), str(p.get("paper_saved") or "–")])
    return _table(["date", "git", "device", "model", "mode", "width", "saved (avg)",
                   "saved (peak)", "KV waste", "paper"], rows)


def _serving_group(r: Record) -> tuple:
    p = r["params"]
    return (r.get("device"), p.get("model"), p.get("workload"), p.get("max_concurrency"),
            p.get("label"), r.get("git_sha"))


def plot_serving(records: Sequence[Record], path: str) -> Optional[str]:
    """Latency vs achieved throughput, one line per (device, model, workload, run set)."""
    if not records:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: "OrderedDict[tuple, list[Record]]" = OrderedDict()
    for r in records:
        groups.setdefault(_serving_group(r), []).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, recs in groups.items():
        recs = sorted(recs, key=lambda r: r["metrics"].get("requests_s") or 0)
        label = f"{key[1]} · {key[2]} · {key[0]}" + (f" · {key[4]}" if key[4] else "")
        xs = [r["metrics"].get("requests_s") or 0 for r in recs]
        norm = [r["metrics"].get("normalized_latency_s_per_tok") for r in recs]
        if any(v is not None for v in norm):
            ax1.plot(xs, [v if v is not None else float("nan") for v in norm], "o-", label=label)
        else:  # older records: mean e2e latency instead
            ax1.plot(xs, [(r["metrics"].get("e2e_mean_ms") or float("nan")) / 1000 for r in recs],
                     "o--", label=label + " (e2e s)")
        tok = [r["metrics"].get("output_tok_s") or 0 for r in recs]
        for q, style in (("p50", "o-"), ("p99", "x--")):
            vals = [r["metrics"].get(f"tpot_{q}_ms") for r in recs]
            ax2.plot(tok, [v if v is not None else float("nan") for v in vals], style,
                     label=f"TPOT {q} · {label}")
    ax1.set(xlabel="achieved requests/s", ylabel="normalized latency (s/token)",
            title="Latency vs request throughput")
    ax2.set(xlabel="output tok/s", ylabel="ms per output token", title="TPOT vs token throughput")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(records: Sequence[Record], hf: Sequence[Record], path: str) -> Optional[str]:
    """Per workload: engine vs HF output tok/s (log scale), total tok/s vs the roofline."""
    recs = [r for r in records if r["params"].get("n", 1) == 1
            and r["params"].get("beam_width", 1) == 1]
    if not recs:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many_devices = len({r.get("device") for r in recs}) > 1
    names = [r["params"].get("workload", "?") + (f"\n{r.get('device')}" if many_devices else "")
             for r in recs]
    xs = list(range(len(recs)))
    w = 0.38
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 2.6 * len(recs) + 4), 4.5))
    engine = [r["metrics"].get("output_tok_s") or 0 for r in recs]
    base = [hf_for(r, hf)[0] or 0 for r in recs]
    ax1.bar([x - w / 2 for x in xs], engine, w, label="pagedserve")
    ax1.bar([x + w / 2 for x in xs], base, w, label="HF static batching")
    for x, e, b in zip(xs, engine, base):
        if b:
            ax1.annotate(f"{e / b:.0f}x", (x, max(e, b)), ha="center", va="bottom", fontsize=8)
    ax1.set(ylabel="output tok/s", title="Output throughput vs HF transformers")
    total = [r["metrics"].get("total_tok_s") or 0 for r in recs]
    roof = [r["metrics"].get("roofline_tok_s") for r in recs]
    ax2.bar(xs, total, 0.6, label="pagedserve total tok/s", color="tab:blue")
    for x, t, rf in zip(xs, total, roof):
        if rf:
            ax2.hlines(rf, x - 0.4, x + 0.4, colors="tab:red", linewidth=2)
            ax2.annotate(f"{t / rf:.0%} of roofline", (x, rf), ha="center", va="bottom",
                         fontsize=8)
    ax2.plot([], [], color="tab:red", linewidth=2, label="matmul roofline")
    ax2.set(ylabel="prompt + output tok/s", title="Total throughput vs measured roofline")
    if any(v > 0 for v in engine + base):
        ax1.set_yscale("log")  # HF and the engine sit orders of magnitude apart
    ax2.set_ylim(0, 1.15 * max([t for t in total] + [rf or 0 for rf in roof]) or 1)
    for ax in (ax1, ax2):
        ax.set_xticks(xs)
        ax.set_xticklabels(names, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(records: Sequence[Record], out_dir: str, show_all: bool = False,
           plots: bool = True) -> str:
    """Write report.md (and the plots) into out_dir; returns the markdown."""
    os.makedirs(out_dir, exist_ok=True)
    by = lambda b: [r for r in records if r.get("bench") == b]  # noqa: E731
    tput, hf, serving, sharing = by("throughput"), by("hf_baseline"), by("serving"), by("sharing")
    if not show_all:
        tput = latest(tput, _tput_key)
        serving = latest(serving, lambda r: (*_serving_group(r)[:5], r["params"].get("request_rate")))
        sharing = latest(sharing, lambda r: (r.get("device"), r["params"].get("model"),
                                             r["params"].get("mode"), r["params"].get("width")))
    parts = ["# pagedserve benchmark report", ""]
    if tput:
        parts += ["## Offline throughput", "", throughput_table(tput, hf), ""]
        if plots and plot_throughput(tput, hf, os.path.join(out_dir, "throughput_per_workload.png")):
            parts += ["![throughput per workload](throughput_per_workload.png)", ""]
    if serving:
        parts += ["## Online serving", "", serving_table(serving), ""]
        if plots and plot_serving(serving, os.path.join(out_dir, "serving_latency.png")):
            parts += ["![latency vs throughput](serving_latency.png)", ""]
    if sharing:
        parts += ["## KV memory saved by sharing", "", sharing_table(sharing), ""]
    if len(parts) == 2:
        parts.append("No results recorded yet.")
    text = "\n".join(parts).rstrip() + "\n"
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(text)
    return text


def main(argv: Optional[list[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="*", help="results .jsonl files or folders")
    parser.add_argument("--results-dir", default=RESULTS_DIR)
    parser.add_argument("--out-dir", default=os.path.join(RESULTS_DIR, "report"))
    parser.add_argument("--all", action="store_true", help="every record, not the latest per key")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    records = load_results(args.inputs or [args.results_dir])
    text = render(records, args.out_dir, show_all=args.all, plots=not args.no_plots)
    print(text)
    return text


if __name__ == "__main__":
    main()
