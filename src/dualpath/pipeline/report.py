"""`dualpath report`: one Markdown page with PNG plots of everything measured on a bank.

Sections: retrieval (tower vs heuristic queries), the LVM against its baselines, the dual path
(decision mix per lane, c_max with each lane's thresholds, output quality against LVM-only and
bank-only), and the settings that produced the numbers. The page and its plots are written to a
temporary directory and moved into place at the end, so an interrupted report leaves the old one.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from dualpath.config import DualPathConfig
from dualpath.evaluation.lvm import evaluate_bank
from dualpath.evaluation.retrieval import heldout_eval_pairs, relative_gain, retrieval_table
from dualpath.fileio import json_default, staged_files
from dualpath.pipeline.evaluate import DECISIONS, SUMMARY_COLUMNS, SUMMARY_PERCENT, case_summary, evaluate_generation
from dualpath.pipeline.free_running import FREE_RUNNING_COLUMNS, PERCENT_KEYS, free_running_note, free_running_rows
from dualpath.pipeline.generator import Generator

log = logging.getLogger(__name__)

DECISION_COLOURS = {"SNAP": "#2e7d32", "BLEND": "#0288d1", "NOVEL": "#f9a825", "NOVEL_DUP_DROP": "#8e24aa"}


def measure(generator: Generator, cfg: DualPathConfig, max_pairs: int = 2000, free_docs: int = 200) -> dict[str, Any]:
    """Every number the report shows, as one JSON-ready dict."""
    bank = generator.bank
    lanes = {n: lane for n, lane in generator.lanes.items() if not n.startswith("reference-")}
    started = time.perf_counter()
    split_cfg = cfg.model_copy(update={"split": generator.lvm.training_split(cfg.split)})
    pairs = heldout_eval_pairs(bank.all_vectors(), bank.documents(), split_cfg)
    retrieval = retrieval_table(bank.search, pairs, generator.tower)
    lvm = evaluate_bank(bank, cfg).to_dict()
    generation = evaluate_generation(
        bank, generator.lvm, generator.tower, lanes, cfg, max_pairs=max_pairs, free_docs=free_docs,
        generator=generator,
    )
    return {
        "bank": {"path": str(bank.path), **{k: bank.manifest.get(k) for k in ("count", "dim", "encoder", "dtype")},
                 "documents": len(bank.documents()), "index": bank.index_spec},
        "retrieval": {"pairs": len(pairs), "table": retrieval,
                      "gain": relative_gain(retrieval) if "tower" in retrieval else None},
        "lvm": lvm,
        "generation": generation,
        "lanes": {n: lane.model_dump(mode="json") for n, lane in lanes.items()},
        "settings": cfg.to_dict(),
        "models": {
            "lvm": generator.lvm.config,
            "tower": generator.tower.checkpoint_config() if generator.tower else None,
        },
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "seconds": time.perf_counter() - started,
    }


def write_report(results: dict[str, Any], out: str | Path) -> Path:
    """Write report.md, results.json and the PNG plots into `out`, each file replaced atomically.

    `out` may hold other files: only the report's own files are replaced, nothing else is removed, and a
    path that exists and is not a directory is refused.
    """
    out = Path(out)
    with staged_files(out) as tmp:
        plots = {
            "decision_mix": _plot_decision_mix(results, tmp / "decision_mix.png"),
            "c_max": _plot_c_max(results, tmp / "c_max.png"),
            "recall": _plot_recall(results, tmp / "recall.png"),
            "lvm": _plot_lvm(results, tmp / "lvm.png"),
        }
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=json_default) + "\n")
        (tmp / "report.md").write_text(render_markdown(results, plots))
    return out / "report.md"


# -- Markdown -----------------------------------------------------------------------------------------


def render_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    bank = results["bank"]
    gen = results["generation"]
    lines = [
        "# dualpath report",
        "",
        f"Bank `{bank['path']}`: {bank['count']} concepts from {bank['documents']} documents, "
        f"{bank['dim']}-d `{bank['encoder']}`, index `{bank['index']}`. Held-out documents only "
        "(docs/protocol.md: split by document, context excluded from every result list).",
        "",
        "## Retrieval: query tower vs heuristic queries",
        "",
        f"{results['retrieval']['pairs']} held-out pairs.",
        "",
        _table(results["retrieval"]["table"], "query"),
        "",
    ]
    gain = results["retrieval"].get("gain")
    if gain:
        lines += [
            "Tower over the best heuristic: " + ", ".join(f"{m} {v:+.1%}" for m, v in gain.items()) + ".", "",
        ]
    lines += [f"![recall]({plots['recall']})", "", "## The LVM against its baselines", ""]
    lvm = results["lvm"]
    lines += [
        f"{lvm['pairs']} held-out pairs; contrastive accuracy within batches of {lvm['contrastive_batch']}; "
        "`context_cos` is the mean max-cosine to the context (high = copying).",
        "",
        _table(lvm["rows"], "prediction"),
        "",
        f"![lvm]({plots['lvm']})",
        "",
        "## Grounding: when does the bank know?",
        "",
        "Each lane in the three cases a user meets: *known* (documents the models trained on), *added* (held-out "
        "documents in the bank, never seen by the models nor by the calibration) and *unknown* (the same documents "
        "hidden from every search); and *restated* (added, but the prompt says the document's sentences in other "
        "words, as a user types what a bank article says: a simulated restatement drops asides, a clause, about "
        "two words in five and the tail, at a median cosine of about 0.77 to the original). Teacher-forced figures "
        "beside free-running ones (the text a reader sees, 8 steps from a document's first two concepts). "
        "`exact next`: the step outputs the true next concept itself; "
        "`false grounding`: SNAPs whose concept is not the truth and is further from it than the LVM's vector; "
        "`own next concepts in order`: the share of the document's next concepts a stream shows, in order, from its "
        "first step. Intervals are 95 % paired bootstraps.",
        "",
        _summary_table(gen),
        "",
        _confidence_note(gen),
        "",
        "## The dual path (added case)",
        "",
        f"Teacher-forced on {gen['pairs']} held-out pairs, retrieval query from the {gen['query_source']}. "
        "`lvm-only` never snaps and `bank-only` always snaps to the best shortlist concept: the same code "
        "with extreme thresholds. `hit@5`: the true next concept is among the 5 bank concepts nearest the "
        "output. Free-running results, what a reader sees, follow in the next section.",
        "",
        "| lane | τ_snap | τ_novel | calibrated | SNAP | BLEND | NOVEL | DUP | mean cos | hit@5 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in gen["lanes"].items():
        shares = [row["by_decision"][d]["share"] for d in DECISIONS]
        lines.append(
            f"| {name} | {row['tau_snap']:.3f} | {row['tau_novel']:.3f} | {'yes' if row['calibrated'] else 'no'} | "
            + " | ".join(f"{s:.1%}" for s in shares)
            + f" | {row['mean_cos']:.4f} | {row['hit@5']:.3f} |"
        )
    lines += ["", "Cosine of the output to the true next concept, by decision:", "",
              "| lane | " + " | ".join(DECISIONS) + " |", "|---|" + "---|" * len(DECISIONS)]
    for name, row in gen["lanes"].items():
        cells = []
        for d in DECISIONS:
            v = row["by_decision"][d]["mean_cos"]
            cells.append("-" if v is None else f"{v:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    verdict = _verdict(gen)
    best = gen.get("quality_optimum")
    if best:
        verdict += (
            f"\n\nThe thresholds that maximise mean cosine on these pairs (exact search over a quantile grid of "
            f"c_max, `{results['settings']['decider']['schedule']}` schedule): τ_snap {best['tau_snap']:.3f}, "
            f"τ_novel {best['tau_novel']:.3f} → mean cos {best['mean_cos']:.4f}."
        )
    q = gen["c_max_quantiles"]
    lines += [
        "",
        verdict,
        "",
        f"![decision mix]({plots['decision_mix']})",
        "",
        "c_max (best cosine of v̂ to the shortlist) quantiles: "
        + ", ".join(f"{k} {v:.3f}" for k, v in q.items()) + ".",
        "",
        f"![c_max]({plots['c_max']})",
        "",
        *free_running_section(gen.get("free_running") or {}),
        "## Settings",
        "",
        "```json",
        json.dumps({"settings": results["settings"], "models": results["models"], "lanes": results["lanes"]},
                   indent=2, default=json_default),
        "```",
        "",
        f"Measured in {results['seconds']:.0f} s on Python {results['machine']['python']}, "
        f"{results['machine']['platform']}.",
        "",
    ]
    return "\n".join(lines)


def free_running_section(free: dict[str, Any]) -> list[str]:
    """Markdown lines: the free-running table (lanes and baselines) and three sample continuations per lane."""
    if not free.get("lanes"):
        return []
    lines = [
        "## Free-running: what a reader sees",
        "",
        f"{free['prompts']} prompts of {free['prompt_concepts']} concepts from {free['docs']} held-out documents, "
        f"{free['steps']} steps each, every step fed back and rendered as text. `repeat`: the rendered concept was "
        "already shown (prompt or earlier step); `cos to truth`: step t against the document's own concept t "
        "(text: the rendered concept; vector: the decided vector); `grounded`: the text is the bank concept "
        "itself (SNAP). Baselines of the same run: `lvm-only`, `bank-only`, `random-<lane>` (the lane's own "
        "shares, decided by chance instead of by c) and `knn` (kNN continuation). " + free_running_note(free),
        "",
        "| " + " | ".join(FREE_RUNNING_COLUMNS.values()) + " |",
        "|---" * len(FREE_RUNNING_COLUMNS) + "|",
    ]
    for row in free_running_rows(free):
        cells = [row["name"]] + [
            "-" if row[k] is None else row[k] if isinstance(row[k], str)
            else f"{row[k]:.1%}" if k in PERCENT_KEYS else f"{row[k]:.4f}"
            for k in list(FREE_RUNNING_COLUMNS)[1:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### Sample continuations", ""]
    for name, m in free["lanes"].items():
        if name.startswith("random-") or name in ("bank-only",):
            continue
        lines += [f"**{name}**", ""]
        for sample in m["samples"]:
            lines.append(f"- *{' '.join(sample['prompt'])}* →")
            for step in sample["steps"]:
                lines.append(f"  - `{step['decision']}` {step['text']}")
        lines.append("")
    return lines


def _verdict(gen: dict[str, Any]) -> str:
    lanes = gen["lanes"]
    if "neutral" not in lanes:
        return ""
    n, lvm_only, bank_only = lanes["neutral"], lanes["lvm-only"], lanes["bank-only"]
    better = n["mean_cos"] > lvm_only["mean_cos"] and n["mean_cos"] > bank_only["mean_cos"]
    word = "beats" if better else "does NOT beat"
    return (
        f"**Neutral lane {word} both single paths** on mean cosine to the true next concept: "
        f"{n['mean_cos']:.4f} vs LVM-only {lvm_only['mean_cos']:.4f} and bank-only {bank_only['mean_cos']:.4f}; "
        f"end-to-end hit@5 {n['hit@5']:.1%} (the reference system: 0.65 %)."
    )


def _table(rows: dict[str, dict[str, float]], first: str) -> str:
    columns = list(next(iter(rows.values())))
    out = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, row in rows.items():
        out.append(f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |")
    return "\n".join(out)


# -- plots --------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _plot_decision_mix(results: dict[str, Any], path: Path) -> str:
    plt = _pyplot()
    lanes = results["generation"]["lanes"]
    names = list(lanes)
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1.5))
    left = np.zeros(len(names))
    for d in DECISIONS:
        shares = np.array([lanes[n]["by_decision"][d]["share"] for n in names])
        ax.barh(names, shares, left=left, color=DECISION_COLOURS[d], label=d)
        left += shares
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of steps")
    ax.set_title("Decision mix per lane (held-out, teacher-forced)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4, frameon=False)
    return _save(plt, fig, path)


def _plot_c_max(results: dict[str, Any], path: Path) -> str:
    plt = _pyplot()
    sample = np.asarray(results["generation"]["c_max_sample"])
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(sample, bins=50, color="#90a4ae")
    lanes: dict[str, dict] = results["lanes"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, lane) in enumerate(lanes.items()):
        colour = colours[i % len(colours)]
        ax.axvline(lane["tau_snap"], color=colour, lw=1.5, label=f"{name} τ_snap")
        ax.axvline(lane["tau_novel"], color=colour, lw=1.5, ls="--", label=f"{name} τ_novel")
    ax.set_xlabel("c_max = max cos(v̂, shortlist)")
    ax.set_ylabel("held-out steps")
    ax.set_title("c_max with each lane's thresholds (solid: snap, dashed: novel)")
    ax.legend(fontsize=7, ncol=2)
    return _save(plt, fig, path)


def _plot_recall(results: dict[str, Any], path: Path) -> str:
    plt = _pyplot()
    table = results["retrieval"]["table"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, row in table.items():
        ks = [int(k[2:]) for k in row if k.startswith("R@")]
        ax.plot(ks, [row[f"R@{k}"] for k in ks], marker="o", label=name, lw=2.5 if name == "tower" else 1.2)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K of the true next concept")
    ax.set_title("Retrieval on held-out documents")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def _plot_lvm(results: dict[str, Any], path: Path) -> str:
    plt = _pyplot()
    rows = {n: r for n, r in results["lvm"]["rows"].items() if n != "oracle"}
    metrics = [m for m in next(iter(rows.values())) if m != "context_cos"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(metrics))
    for i, (name, row) in enumerate(rows.items()):
        ax.bar(x + i * width, [row[m] for m in metrics], width, label=name)
    ax.set_xticks(x + width * (len(rows) - 1) / 2, metrics)
    ax.set_ylim(0, 1)
    ax.set_title("LVM vs copy-last and mean-of-context (held-out)")
    ax.legend()
    return _save(plt, fig, path)


def _summary_table(gen: dict[str, Any]) -> str:
    """pipeline.evaluate.case_summary as a Markdown table."""
    rows = case_summary(gen)
    head = "| " + " | ".join(SUMMARY_COLUMNS.values()) + " |"
    lines = [head, "|" + "---|" * len(SUMMARY_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(
            "-" if row[key] is None else row[key] if isinstance(row[key], str)
            else f"{row[key]:.1%}" if key in SUMMARY_PERCENT else f"{row[key]:.4f}"
            for key in SUMMARY_COLUMNS
        ) + " |")
    return "\n".join(lines)


def _confidence_note(gen: dict[str, Any]) -> str:
    """How well the SNAP confidence is calibrated on the evaluation's pairs, per case."""
    parts = []
    for case, measured in gen.get("cases", {}).items():
        brier = measured.get("confidence", {}).get("brier")
        if brier is not None:
            parts.append(f"{case} {brier:.4f} (tower's top-1 is the truth for {measured['tower_top1']:.1%} of pairs)")
    if not parts:
        return ""
    return ("Brier score of the SNAP confidence of each step's chosen candidate (lower is better; results.json "
            "holds the reliability curves): " + "; ".join(parts) + ".")
