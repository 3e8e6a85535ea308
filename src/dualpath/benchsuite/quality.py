"""Quality on the bank's held-out documents with the docs/protocol.md protocol, as three tables.

The numbers come from `pipeline.report.measure` (what `dualpath report` shows), so the suite and
the report can never disagree: retrieval R@K / MRR of the query tower against the last / mean /
exponentially weighted context vector and the oracle; the LVM against copy-last and mean of
context; the dual path's decision mix and output quality per lane against LVM-only and bank-only.
"""

from __future__ import annotations

from typing import Any

from dualpath.benchsuite.tables import Section
from dualpath.evaluation.lvm import COLUMNS as LVM_METRICS
from dualpath.evaluation.retrieval import KS
from dualpath.models.heuristics import HEURISTICS
from dualpath.pipeline.evaluate import DECISIONS, HIT_K, SUMMARY_COLUMNS, case_summary
from dualpath.pipeline.free_running import FREE_RUNNING_COLUMNS, free_running_note, free_running_rows


def retrieval_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the retrieval table, with each row's R@10 and MRR over the best heuristic's."""
    return retrieval_table_rows(results["retrieval"]["table"])


def retrieval_table_rows(table: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Rows of any table holding the heuristic queries, with each row's R@10 and MRR over the best heuristic's."""
    best = {m: max(table[h][m] for h in HEURISTICS) for m in ("R@10", "MRR")}
    return [
        {"name": name, **row,
         "x_r10": row["R@10"] / best["R@10"] if best["R@10"] > 0 else None,
         "x_mrr": row["MRR"] / best["MRR"] if best["MRR"] > 0 else None}
        for name, row in table.items()
    ]


def lvm_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the LVM table, with each row's mean cosine over copy-last's."""
    rows: dict[str, dict[str, float]] = results["lvm"]["rows"]
    base = rows["copy-last"]["cos"]
    return [{"name": name, **row, "x_cos": row["cos"] / base if base > 0 else None} for name, row in rows.items()]


def dual_path_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per lane (LVM-only and bank-only included): thresholds, decision mix, output quality."""
    gen = results["generation"]
    lanes: dict[str, dict[str, Any]] = gen["lanes"]
    free = gen.get("free_running", {})
    lvm_only, bank_only = lanes["lvm-only"]["mean_cos"], lanes["bank-only"]["mean_cos"]
    rows = []
    for name, lane in lanes.items():
        rows.append({
            "name": name,
            "tau_snap": lane["tau_snap"],
            "tau_novel": lane["tau_novel"],
            "calibrated": lane["calibrated"],
            **{f"{d.lower()}_share": lane["by_decision"][d]["share"] for d in DECISIONS},
            "mean_cos": lane["mean_cos"],
            "hit": lane[f"hit@{HIT_K}"],
            "free_cos": free.get("lanes", {}).get(name, {}).get("cos_true"),
            "x_lvm_only": lane["mean_cos"] / lvm_only if lvm_only > 0 else None,
            "x_bank_only": lane["mean_cos"] / bank_only if bank_only > 0 else None,
        })
    return rows


RETRIEVAL_COLUMNS = {
    "name": "query", **{f"R@{k}": f"R@{k}" for k in KS}, "MRR": "MRR",
    "x_r10": "R@10 × best heuristic", "x_mrr": "MRR × best heuristic",
}
LVM_COLUMNS = {"name": "prediction", **{m: m for m in LVM_METRICS}, "x_cos": "cos × copy-last"}
DUAL_PATH_COLUMNS = {
    "name": "lane", "tau_snap": "τ_snap", "tau_novel": "τ_novel", "calibrated": "calibrated",
    **{f"{d.lower()}_share": d for d in DECISIONS},
    "mean_cos": "mean cos", "hit": f"hit@{HIT_K}", "free_cos": "free-running cos",
    "x_lvm_only": "cos × LVM-only", "x_bank_only": "cos × bank-only",
}


def free_running_sections(results: dict[str, Any], corpus: str, key: str) -> dict[str, Section]:
    """The free-running table of one `measure` result (lanes and baselines, what a reader sees)."""
    free = results["generation"].get("free_running") or {}
    if not free.get("lanes"):
        return {}
    note = (
        f"{free['prompts']} prompts of {free['prompt_concepts']} concepts from {free['docs']} held-out documents "
        f"of {corpus}, {free['steps']} steps each, every step fed back and rendered as text; baselines of the same "
        "run: LVM-only, bank-only, random-<lane> (the lane's shares, decided by chance), kNN continuation. "
        + free_running_note(free)
    )
    return {key: Section(f"Quality: free-running on {corpus}", note, FREE_RUNNING_COLUMNS,
                                              free_running_rows(free))}


def case_sections(results: dict[str, Any], corpus: str, key: str) -> dict[str, Section]:
    """Every lane in the three cases a user meets (known / added / unknown), teacher-forced beside
    free-running, with LVM-only and kNN continuation of the same run (`pipeline.evaluate.case_summary`)."""
    gen = results["generation"]
    rows = case_summary(gen)
    if not rows:
        return {}
    top1 = ", ".join(f"{case} {m['tower_top1']:.1%}" for case, m in gen.get("cases", {}).items())
    note = (
        f"{corpus}. known: documents the models trained on; added: the evaluation half of the held-out documents, "
        "in the bank, never seen by the models or the calibration; restated: the same, the prompt's sentences "
        "said in other words (simulated); unknown: the same documents hidden from every "
        f"search. The tower's top-1 is the true next concept for {top1} of the teacher-forced pairs. Intervals are "
        "95 % paired bootstraps against LVM-only and against the lane's own decisions dealt out at random."
    )
    return {key: Section(f"Quality: grounding in three cases on {corpus}", note, SUMMARY_COLUMNS,
                         rows)}
