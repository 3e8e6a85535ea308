"""Resident memory of an opened bank, measured in a fresh process.

In the benchmark's own process the allocator keeps what earlier measurements freed, so the
difference before and after opening a bank there says little. A child process imports the
libraries, reads its resident set size, opens the bank, answers one query (so everything a search
needs is loaded), and reads it again; the difference is what an opened bank costs. `vectors.npy`
is memory-mapped and only the rows asked for are read, so it adds page cache, not resident heap.

    python -m dualpath.benchsuite.memory BANK_DIR      prints one JSON line
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from dualpath.errors import DualPathError

MIB = 2**20


def opened_bank_rss(path: str | Path, timeout_s: float = 600.0) -> dict[str, Any]:
    """{"count", "dim", "index", "before_mib", "after_mib", "bank_mib"} for the bank at `path`."""
    cmd = [sys.executable, "-m", "dualpath.benchsuite.memory", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DualPathError(f"measuring the memory of bank {path} failed: {tail}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _measure(path: str) -> dict[str, Any]:
    import numpy as np
    import psutil

    import dualpath.bank.faiss_backend  # noqa: F401  the index library's own import is no part of a bank's cost
    from dualpath.bank import ConceptBank

    process = psutil.Process()
    before = process.memory_info().rss
    bank = ConceptBank.open(path)
    bank.search(np.asarray(bank.vectors([0]), dtype=np.float32), 10)
    after = process.memory_info().rss
    out = {
        "count": len(bank),
        "dim": bank.dim,
        "index": bank.index_spec,
        "before_mib": before / MIB,
        "after_mib": after / MIB,
        "bank_mib": (after - before) / MIB,
    }
    bank.close()
    return out


if __name__ == "__main__":
    print(json.dumps(_measure(sys.argv[1])))
