"""Briefly trained models in a copy of a test bank: what the generation, service and demo tests run on.

Tiny LVM and tower (hidden 64, 2 epochs) trained through the library's own trainers, so the
tests exercise real checkpoints, not hand-made weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dualpath.bank import ConceptBank
from dualpath.config import DualPathConfig

TINY = {
    "lvm": {"hidden": 64, "epochs": 2, "batch_size": 64},
    "tower": {"hidden": 64, "epochs": 2, "batch_size": 64},
    "sampler": {"hidden": 64, "layers": 2, "epochs": 2, "batch_size": 64},
    "split": {"heldout_fraction": 0.2, "context": 4},
}


def tiny_config() -> DualPathConfig:
    return DualPathConfig.from_dict(TINY, source="tests")


def train_tiny_models(source_bank: Path, out: Path, with_tower: bool = True) -> Path:
    """Copy `source_bank` to `out` and train a tiny LVM (and tower) into `out/models/`."""
    from dualpath.training.lvm import train_lvm
    from dualpath.training.retriever import train_retriever

    shutil.copytree(source_bank, out)
    cfg = tiny_config()
    with ConceptBank.open(out, cfg) as bank:
        train_lvm(bank, cfg, out / "models" / "lvm")
        if with_tower:
            train_retriever(bank, cfg, out / "models" / "tower")
    return out
