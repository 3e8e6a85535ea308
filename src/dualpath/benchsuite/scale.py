"""A million concepts end to end with bounded memory: building a bank and training the LVM and the tower on it.

Synthetic concepts grouped into synthetic documents (every document's concepts around one topic centre,
`CONCEPTS_PER_DOCUMENT` each) stand in for an encoded corpus: encoding is measured on its own (one process
against several, on the bank's real sentences), the rest of a build here. Each measurement runs in a fresh
child process that reports its own peak resident set (VmHWM), so nothing the suite's process holds counts:

    make     the source vectors, written block by block to a .npy (not measured)
    build    `ConceptBank.from_vectors` from that memory-mapped file and a generator of concepts
    train    the LVM through the shared epoch loop on the bank; resident memory after every epoch
    tower    the query tower likewise, mining and evaluating samples of the pairs (TOWER)

    python -m dualpath.benchsuite.scale make|build|train|tower DIR N [EPOCHS]     prints one JSON line
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
# The query tower likewise (hidden 128, batches of 1024, no queue), mining every epoch. At a million concepts a
# flat search costs ~0.15 s per query on one loaded core, so mining and evaluating every pair (~880k and ~18k
# searches) cannot fit a run: each epoch mines a sample of TOWER_MINE training pairs and evaluates a fixed sample
# of TOWER_EVAL held-out pairs (tower.mine_pairs, tower.eval_pairs), and the heuristic rows are not computed.
TOWER_MINE, TOWER_EVAL = 256, 256
TOWER = {"tower": {"hidden": 128, "batch_size": 1024, "queue_size": 0, "warmup_epochs": 0,
                   "mine_pairs": TOWER_MINE, "eval_pairs": TOWER_EVAL}, "split": {"heldout_fraction": 0.02}}


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


def tower(directory: Path, epochs: int) -> dict[str, Any]:
    from dualpath.bank import ConceptBank
    from dualpath.config import DualPathConfig
    from dualpath.runtime import torch_threads
    from dualpath.training.loop import run_training
    from dualpath.training.retriever import RetrieverTask

    cfg = DualPathConfig.from_dict({**TOWER, "tower": {**TOWER["tower"], "epochs": epochs}})
    with ConceptBank.open(directory / BANK, cfg) as bank:
        before = _rss_mib()
        with torch_threads(cfg.tower.threads):
            task = RetrieverTask.from_bank(bank, cfg, directory / "tower")
            result = run_training(task, directory / "tower", epochs, watchdog_seconds=cfg.tower.watchdog_seconds)
        return {"pairs": len(task.train), "start_mib": before, "peak_mib": _peak_mib(),
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
    towered = _child("tower", str(directory), str(n), str(epochs))
    raw_mib = n * DIM * 4 / MIB
    per_million = built["seconds"] * 1e6 / n
    rows = [
        {"name": f"build ({built['index']}, from_vectors)", "vectors": n, "seconds_s": built["seconds"],
         "per_million_s": per_million, "raw_mib": raw_mib, "index_mib": built["index_mib"],
         "peak_mib": built["peak_mib"], "x_raw": built["peak_mib"] / raw_mib,
         "x_bound": built["peak_mib"] / (1.5 * raw_mib + built["index_mib"])},
    ]
    memory: list[dict[str, Any]] = []
    for name, run in (("LVM", trained), ("tower", towered)):
        training_rows, epoch_rows = training_rows_of(name, run, n)
        rows += training_rows
        memory += epoch_rows
    return rows, memory


def training_rows_of(name: str, run: dict[str, Any], n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training row (pairs/s: median over epochs, each epoch's time including mining and evaluation) and one
    memory row per epoch, of a `train` or `tower` step's result."""
    raw_mib = n * DIM * 4 / MIB
    history = run["epochs"]
    first = history[0]["rss_mib"]
    pairs_per_s = [run["pairs"] / h["seconds"] for h in history]
    rows = [{"name": f"{name} training ({len(history)} epochs)", "vectors": n, "seconds_s": sum(h["seconds"]
             for h in history), "pairs": run["pairs"], "pairs_per_s": float(np.median(pairs_per_s)),
             "raw_mib": raw_mib, "peak_mib": run["peak_mib"], "x_raw": run["peak_mib"] / raw_mib}]
    memory = [{"name": f"{name} epoch {h['epoch']}", "epoch_s": h["seconds"],
               "pairs_per_s": run["pairs"] / h["seconds"], "rss_mib": h["rss_mib"], "x_epoch_1": h["rss_mib"] / first,
               "x_raw": h["rss_mib"] / raw_mib}
              for h in history]
    return rows, memory


def bench_encoding_processes(encoder: Any, texts: list[str], processes: int = 2) -> list[dict[str, Any]]:
    """Sentences/s of the encoder in this process (a torch thread per core) against the pool `bank build` uses
    (`encoding.pool.ProcessPoolEncoder`: `processes` workers of cores/processes threads), on the same texts."""
    from dualpath.encoding.pool import ProcessPoolEncoder
    from dualpath.runtime import torch_threads

    with torch_threads(os.cpu_count() or 1):
        encoder.encode(texts[:32])  # warm
        start = time.perf_counter()
        single_vectors = encoder.encode(texts)
        single = time.perf_counter() - start
    with ProcessPoolEncoder(encoder, processes) as pool:
        pool.encode(texts[:32])  # the workers load the model: not timed
        start = time.perf_counter()
        multi_vectors = pool.encode(texts)
        multi = time.perf_counter() - start
    agree = float(np.min(np.sum(single_vectors * multi_vectors, axis=1)))
    return [
        {"name": "1 process (baseline)", "sentences": len(texts), "per_s": len(texts) / single,
         "per_million_s": single * 1e6 / len(texts), "x_baseline": 1.0},
        {"name": f"{processes} worker processes ({pool.threads} thread(s) each)", "sentences": len(texts),
         "per_s": len(texts) / multi, "per_million_s": multi * 1e6 / len(texts), "x_baseline": multi / single,
         "min_cos": agree},
    ]


SCALE_COLUMNS = {
    "name": "step", "vectors": "concepts", "seconds_s": "s", "per_million_s": "s per million", "pairs": "pairs",
    "pairs_per_s": "pairs/s", "raw_mib": "raw float32 MiB", "index_mib": "index MiB", "peak_mib": "peak RSS MiB",
    "x_raw": "× raw", "x_bound": "× (1.5 raw + index)",
}
EPOCH_COLUMNS = {"name": "epoch", "epoch_s": "s (train + mining + eval)", "pairs_per_s": "pairs/s",
                 "rss_mib": "resident MiB", "x_epoch_1": "× epoch 1", "x_raw": "× raw"}
ENCODE_COLUMNS = {"name": "encoding", "sentences": "sentences", "per_s": "sentences/s",
                  "per_million_s": "s per million", "x_baseline": "× baseline (time)",
                  "min_cos": "min cosine to baseline"}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    step, where, size = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if step == "make":
        result = make_source(where, size)
    elif step == "build":
        result = build(where)
    elif step == "tower":
        result = tower(where, int(sys.argv[4]))
    else:
        result = train(where, int(sys.argv[4]))
    print(json.dumps(result))
