"""Training speed of the LVM and of each query tower, each tower's retrieval after that epoch, and training memory.

Speed: one epoch of each architecture on the same documents of the bank (at most `max_pairs`
training pairs, so every architecture sees identical data), through the trainers' own
`train_epoch`; the configured architecture of each family is the baseline. s/epoch is projected to
the bank's whole training split from the measured pairs/s.

Each tower kind then trains on for `tower_epochs` in all (untimed) and is evaluated with the
docs/protocol.md protocol on the held-out documents of the same subset (the whole bank searched), beside
the heuristic queries on the same pairs: a like-for-like comparison of the kinds after identical
brief training (in-batch negatives and the queue, no mining), not the quality of a fully trained
tower (that is the bank's own tower, in the quality section).

Memory: the resident set size the training loop recorded after each epoch (`history.json` of
the bank's trained models), against the first epoch's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dualpath.bank import ConceptBank
from dualpath.bank.layout import MODELS_DIR
from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import split_from_config
from dualpath.evaluation.retrieval import baseline_table
from dualpath.runtime import torch_threads
from dualpath.training.loop import HISTORY
from dualpath.training.lvm import LVMTrainingTask
from dualpath.training.retriever import RetrieverTask

log = logging.getLogger(__name__)

LVM_ARCHS = ("gru", "lstm", "transformer")
TOWER_KINDS = ("gru", "bigru", "lstm", "mlp", "attn")
MODELS = ("lvm", "tower")  # bank/models/<name>/history.json


def document_subset(documents: Mapping[str, np.ndarray], max_pairs: int) -> dict[str, np.ndarray]:
    """Documents in bank order until they hold about `max_pairs` (context → next) pairs."""
    chosen: dict[str, np.ndarray] = {}
    pairs = 0
    for doc_id, ids in documents.items():
        if pairs >= max_pairs:
            break
        chosen[doc_id] = ids
        pairs += max(0, len(ids) - 1)
    return chosen


def time_epoch(train_epoch: Callable[[int, Callable[[], None]], float]) -> float:
    start = time.perf_counter()
    train_epoch(1, lambda: None)
    return time.perf_counter() - start


def bench_training(
    bank: ConceptBank, cfg: DualPathConfig, max_pairs: int, workdir: Path, tower_epochs: int = 1
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]], int]:
    """(speed rows, retrieval table of each tower kind and the heuristics, held-out pairs of that table)."""
    documents = document_subset(bank.documents(), max_pairs)
    full = split_from_config(bank.documents(), cfg.split)
    split = split_from_config(documents, cfg.split)
    vectors = bank.all_vectors()
    rows: list[dict[str, Any]] = []
    towers: dict[str, dict[str, float]] = {}
    heldout_pairs = 0
    with torch_threads(cfg.lvm.threads):
        for arch in LVM_ARCHS:
            run_cfg = cfg.model_copy(update={"lvm": cfg.lvm.model_copy(update={"arch": arch})})
            task = LVMTrainingTask(vectors, split, run_cfg, bank.encoder_name)
            task.model.train()
            seconds = time_epoch(task.train_epoch)
            rows.append(_row("LVM", arch, arch == cfg.lvm.arch, len(split.train), seconds, len(full.train)))
            log.info("training speed: LVM %s %.0f pairs/s", arch, rows[-1]["pairs_per_s"])
        for kind in TOWER_KINDS:
            settings = {"tower": kind, "hard_negatives": False, "epochs": tower_epochs}
            run_cfg = cfg.model_copy(update={"tower": cfg.tower.model_copy(update=settings)})
            task = RetrieverTask(vectors, documents, bank, run_cfg, bank.encoder_name, workdir / f"tower-{kind}")
            task.model.train()
            seconds = time_epoch(task.train_epoch)
            rows.append(_row("tower", kind, kind == cfg.tower.tower, len(task.train), seconds, len(full.train)))
            log.info("training speed: tower %s %.0f pairs/s", kind, rows[-1]["pairs_per_s"])
            for epoch in range(2, tower_epochs + 1):
                task.train_epoch(epoch, lambda: None)
            towers[f"{kind} tower"] = task.evaluate()
            heldout_pairs = len(task.heldout)
        towers.update(baseline_table(bank.search, task.heldout))
    for family in ("LVM", "tower"):
        base = next((r for r in rows if r["model"] == family and r["baseline"]), None)
        for r in rows:
            if r["model"] == family:
                r["x_baseline"] = r["epoch_s"] / base["epoch_s"] if base else None
    return rows, towers, heldout_pairs


def _row(model: str, arch: str, baseline: bool, pairs: int, seconds: float, full_pairs: int) -> dict[str, Any]:
    per_s = pairs / seconds
    return {
        "model": model,
        "name": arch + (" (baseline)" if baseline else ""),
        "baseline": baseline,
        "pairs": pairs,
        "measured_s": seconds,
        "pairs_per_s": per_s,
        "epoch_s": full_pairs / per_s,
    }


def training_memory(bank_path: Path) -> list[dict[str, Any]]:
    """Per epoch of each trained model in the bank: resident MiB and seconds, as its training loop recorded."""
    rows: list[dict[str, Any]] = []
    for model in MODELS:
        path = bank_path / MODELS_DIR / model / HISTORY
        if not path.is_file():
            continue
        history = json.loads(path.read_text())
        first = history[0]["resident_mb"] if history else None
        for h in history:
            rows.append({
                "model": model,
                "name": f"epoch {h['epoch']}",
                "epoch_s": h["seconds"],
                "rss_mib": h["resident_mb"],
                "x_epoch_1": h["resident_mb"] / first if first else None,
            })
    return rows


SPEED_COLUMNS = {
    "model": "model", "name": "architecture", "pairs": "pairs timed", "pairs_per_s": "pairs/s",
    "epoch_s": "s/epoch (whole split)", "x_baseline": "× baseline",
}
MEMORY_COLUMNS = {
    "model": "model", "name": "epoch", "epoch_s": "s (train + eval)", "rss_mib": "resident MiB",
    "x_epoch_1": "× epoch 1",
}
