"""What lives where inside a bank directory: the one place that names its files and folders.

```
BANK/
  manifest.json      the bank's description and checksums (bank/manifest.py)
  vectors.npy        the concept vectors, row = concept id (bank/bank.py)
  metadata.sqlite    concept id → document, position, text, domain, title (bank/metadata.py)
  index.faiss, ...   the index backend's own files (bank/faiss_backend.py; Milvus keeps none)
  calibration.json   lane thresholds measured on the bank's held-out documents (pipeline/calibrated_lanes.py)
  models/lvm/        the trained LVM (a training output: best/, last/, history.json), and its
                     sampler in models/lvm/sampler/ (the same layout)
  models/tower/      the trained query tower (the same layout)
```

Models and calibration are written by other parts and are never checksummed by the bank.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST_FILE = "manifest.json"
VECTORS_FILE = "vectors.npy"
METADATA_FILE = "metadata.sqlite"
CALIBRATION_FILE = "calibration.json"
MODELS_DIR = "models"
LVM_DIR = Path(MODELS_DIR) / "lvm"
TOWER_DIR = Path(MODELS_DIR) / "tower"


def lvm_dir(bank_path: str | Path) -> Path:
    """Where a bank's LVM is trained to and loaded from by default."""
    return Path(bank_path) / LVM_DIR


def tower_dir(bank_path: str | Path) -> Path:
    """Where a bank's query tower is trained to and loaded from by default."""
    return Path(bank_path) / TOWER_DIR


def calibration_path(bank_path: str | Path) -> Path:
    return Path(bank_path) / CALIBRATION_FILE
