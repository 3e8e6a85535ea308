"""A million concepts end to end with bounded memory: building a bank and training the LVM on it.

Synthetic concepts grouped into synthetic documents (every document's concepts around one topic centre,
`CONCEPTS_PER_DOCUMENT` each) stand in for an encoded corpus: encoding is measured on its own (one process
against several, on the bank's real sentences), the rest of a build here. Each measurement runs in a fresh
child process that reports its own peak resident set (VmHWM), so nothing the suite's process holds counts:

    make     the source vectors, written block by block to a .npy (not measured)
    build    `ConceptBank.from_vectors` from that memory-mapped file and a generator of concepts
    train    the LVM through the shared epoch loop on the bank; resident memory after every epoch

    python -m dualpath.benchsuite.scale make|build|train DIR N [EPOCHS]     prints one JSON line
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dualpath.errors import DualPathError

log = logging.getLogger(__name__)

MIB = 2**20
DIM = 384
CONCEPTS_PER_DOCUMENT = 10
TOPICS = 20_000  # topic centres the documents draw from
BLOCK = 65_536
SOURCE = "source.npy"
BANK = "bank"
# LVM of the training measurement: lighter than the default (hidden 128, no rollout steps, batches of 1024) so
# that passes over a million pairs fit a benchmark run on a CPU; what is measured is memory and the data path.
TRAIN = {"lvm": {"hidden": 128, "rollout_steps": 0, "batch_size": 1024}, "split": {"heldout_fraction": 0.02}}


def _peak_mib() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def make_source(directory: Path, n: int, seed: int = 0) -> dict[str, Any]:
    """`n` unit vectors in documents of CONCEPTS_PER_DOCUMENT around one topic each, block by block to disk."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((TOPICS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(directory / SOURCE, mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        doc = (start + np.arange(m)) // CONCEPTS_PER_DOCUMENT
        topic = (doc * 7919 + seed) % TOPICS  # one topic per document
        x = centres[topic] + rng.standard_normal((m, DIM), dtype=np.float32) * np.float32(0.7 / np.sqrt(DIM))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    return {"n": n}


def _concepts(n: int) -> Iterator[Any]:
    from dualpath.bank import Concept

    for i in range(n):
        doc = i // CONCEPTS_PER_DOCUMENT
        yield Concept(i, f"doc{doc}", i % CONCEPTS_PER_DOCUMENT, f"concept {i}", f"topic{doc % 12}", "")


def build(directory: Path, index: str = "flat") -> dict[str, Any]:
    from dualpath.bank import ConceptBank
    from dualpath.config import DualPathConfig

    source = np.load(directory / SOURCE, mmap_mode="r")
    cfg = DualPathConfig.from_dict({"bank": {"index": index}})
    before = _rss_mib()
    start = time.perf_counter()
    bank = ConceptBank.from_vectors(directory / BANK, source, _concepts(len(source)), "synthetic", cfg)
    seconds = time.perf_counter() - start
    index_bytes = sum((directory / BANK / f).stat().st_size for f in bank.manifest["index"].get("files", []))
    out = {"n": len(bank), "seconds": seconds, "peak_mib": _peak_mib(), "start_mib": before,
           "index_mib": index_bytes / MIB, "index": bank.index_spec}
    bank.close()
    return out


def train(directory: Path, epochs: int) -> dict[str, Any]:
    from dualpath.bank import ConceptBank
    from dualpath.config import DualPathConfig
    from dualpath.corpus.pairs import split_from_config
    from dualpath.runtime import torch_threads
    from dualpath.training.loop import run_training
    from dualpath.training.lvm import LVMTrainingTask

    cfg = DualPathConfig.from_dict({**TRAIN, "lvm": {**TRAIN["lvm"], "epochs": epochs}})
    with ConceptBank.open(directory / BANK, cfg) as bank:
        before = _rss_mib()
        split = split_from_config(bank.documents(), cfg.split)
        with torch_threads(cfg.lvm.threads):
            task = LVMTrainingTask(bank.all_vectors(), split, cfg, bank.encoder_name)
            result = run_training(task, directory / "lvm", epochs, watchdog_seconds=cfg.lvm.watchdog_seconds)
        return {"pairs": len(split.train), "start_mib": before, "peak_mib": _peak_mib(),
                "epochs": [{"epoch": h.epoch, "seconds": h.seconds, "rss_mib": h.resident_mb} for h in result.history]}


def _child(*args: str, timeout_s: float = 7200.0) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dualpath.benchsuite.scale", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DualPathError(f"scale benchmark step {args[0]} failed: {tail}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def bench_scale(workdir: Path, n: int, epochs: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(build and training rows, per-epoch training memory rows) at `n` synthetic concepts."""
    directory = workdir / f"scale-{n}"
    directory.mkdir(parents=True, exist_ok=True)
    _child("make", str(directory), str(n))
    built = _child("build", str(directory), str(n))
    (directory / SOURCE).unlink()
    trained = _child("train", str(directory), str(n), str(epochs))
    raw_mib = n * DIM * 4 / MIB
    per_million = built["seconds"] * 1e6 / n
    rows = [
        {"name": f"build ({built['index']}, from_vectors)", "vectors": n, "seconds_s": built["seconds"],
         "per_million_s": per_million, "raw_mib": raw_mib, "index_mib": built["index_mib"],
         "peak_mib": built["peak_mib"], "x_raw": built["peak_mib"] / raw_mib,
         "x_bound": built["peak_mib"] / (1.5 * raw_mib + built["index_mib"])},
    ]
    history = trained["epochs"]
    first = history[0]["rss_mib"]
    pairs_per_s = [trained["pairs"] / h["seconds"] for h in history]
    rows.append({"name": f"LVM training ({len(history)} epochs)", "vectors": n, "seconds_s": sum(h["seconds"]
                 for h in history), "pairs": trained["pairs"], "pairs_per_s": float(np.median(pairs_per_s)),
                 "raw_mib": raw_mib, "peak_mib": trained["peak_mib"], "x_raw": trained["peak_mib"] / raw_mib})
    memory = [{"name": f"epoch {h['epoch']}", "epoch_s": h["seconds"], "rss_mib": h["rss_mib"],
               "x_epoch_1": h["rss_mib"] / first, "x_raw": h["rss_mib"] / raw_mib} for h in history]
    return rows, memory


def bench_encoding_processes(encoder: Any, texts: list[str], processes: int = 2) -> list[dict[str, Any]]:
    """Sentences/s of the encoder in this process (a thread per core) against `processes` one-thread workers."""
    from dualpath.runtime import torch_threads

    model = encoder.model
    with torch_threads(os.cpu_count() or 1):
        encoder.encode(texts[:32])  # warm
        start = time.perf_counter()
        encoder.encode(texts)
        single = time.perf_counter() - start
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # read by each worker's torch at start: one thread per process
    try:
        pool = model.start_multi_process_pool(["cpu"] * processes)
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    try:
        model.encode(texts[:32], pool=pool, batch_size=encoder.batch_size)  # workers load the model: not timed
        start = time.perf_counter()
        model.encode(texts, pool=pool, batch_size=encoder.batch_size, chunk_size=max(1, len(texts) // (4 * processes)))
        multi = time.perf_counter() - start
    finally:
        model.stop_multi_process_pool(pool)
    return [
        {"name": "1 process (baseline)", "sentences": len(texts), "per_s": len(texts) / single,
         "per_million_s": single * 1e6 / len(texts), "x_baseline": 1.0},
        {"name": f"{processes} processes", "sentences": len(texts), "per_s": len(texts) / multi,
         "per_million_s": multi * 1e6 / len(texts), "x_baseline": multi / single},
    ]


SCALE_COLUMNS = {
    "name": "step", "vectors": "concepts", "seconds_s": "s", "per_million_s": "s per million", "pairs": "pairs",
    "pairs_per_s": "pairs/s", "raw_mib": "raw float32 MiB", "index_mib": "index MiB", "peak_mib": "peak RSS MiB",
    "x_raw": "× raw", "x_bound": "× (1.5 raw + index)",
}
EPOCH_COLUMNS = {"name": "epoch", "epoch_s": "s (train + eval)", "rss_mib": "resident MiB", "x_epoch_1": "× epoch 1",
                 "x_raw": "× raw"}
ENCODE_COLUMNS = {"name": "encoding", "sentences": "sentences", "per_s": "sentences/s",
                  "per_million_s": "s per million", "x_baseline": "× baseline (time)"}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    step, where, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if step == "make":
        result = make_source(where, size)
    elif step == "build":
        result = build(where)
    else:
        result = train(where, int(sys.argv[4]))
    print(json.dumps(result))
