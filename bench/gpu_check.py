"""Check that encoding, training steps and generation run on CUDA, match the CPU, and how much faster they are.

A machine with a GPU runs it in a few minutes (well under five with the defaults):

    python bench/gpu_check.py                 # CPU against cuda; exits 0 when every check passes, 1 otherwise
    python bench/gpu_check.py --json out.json # the table as JSON too

Each check runs the same work on the CPU and on the device, from the same seeds and data:

- encode: wiki-sample sentences through the bank's encoder; every row's cosine to its CPU vector;
- LVM / tower training: one epoch of each trainer (`train_epoch`) from the same initial weights and
  batches; the epoch's mean loss and the held-out metric after it;
- generation: batched streams from held-out prompts with the CPU-trained models loaded on each device;
  the share of steps with the same decision and each step's vector cosine to the CPU one.

Floating-point sums run in another order on a GPU, so results agree within a tolerance, not bit for bit.
Without CUDA it prints that nothing was checked and exits 0 (3 with `--require-cuda`); `--against cpu`
runs the whole comparison CPU against CPU, which checks the script itself on any machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dualpath.bank import Concept, ConceptBank
from dualpath.config import DualPathConfig
from dualpath.corpus import WIKI_SAMPLE, load_documents, segment_sentences
from dualpath.corpus.pairs import gather_context, split_from_config
from dualpath.encoding import load_encoder
from dualpath.models.lvm import LatentVectorModel
from dualpath.models.towers import QueryTower
from dualpath.pipeline.generator import Generator
from dualpath.runtime import cuda_available, resolve_device
from dualpath.training.lvm import LVMTrainingTask
from dualpath.training.retriever import RetrieverTask

NO_CUDA = 3  # exit status with --require-cuda on a machine without CUDA
# Agreement demanded of the device against the CPU.
ENCODE_MIN_COS = 0.999  # every sentence vector
LOSS_REL = 0.02  # one epoch's mean training loss, relative
METRIC_ABS = 0.02  # the held-out metric after that epoch
GEN_MIN_SAME = 0.9  # share of generation steps with the same decision
GEN_MIN_COS = 0.99  # median cosine of a step's vector to the CPU one
TINY = {"lvm": {"hidden": 128, "epochs": 1, "batch_size": 128}, "tower": {"hidden": 128, "epochs": 1,
        "batch_size": 128, "hard_negatives": False}, "split": {"heldout_fraction": 0.2, "context": 5}}


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def synchronizer(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def corpus(n_sentences: int) -> list[tuple[str, list[str]]]:
    """(document id, sentences) of wiki-sample articles until `n_sentences` sentences."""
    docs: list[tuple[str, list[str]]] = []
    total = 0
    for doc in load_documents(WIKI_SAMPLE):
        texts = segment_sentences(doc.text, DualPathConfig().segment)
        if len(texts) >= 2:
            docs.append((doc.id, texts))
            total += len(texts)
        if total >= n_sentences:
            break
    return docs


def row(check: str, cpu_s: float, dev_s: float, diff: float, tolerance: str, ok: bool) -> dict[str, Any]:
    return {"check": check, "cpu_s": cpu_s, "device_s": dev_s, "speedup": cpu_s / max(dev_s, 1e-9),
            "difference": diff, "tolerance": tolerance, "ok": bool(ok)}


def check_encode(texts: list[str], device: str) -> tuple[dict[str, Any], np.ndarray]:
    runs = {}
    for key, where in (("cpu", "cpu"), ("device", device)):
        cfg = DualPathConfig.from_dict({"device": where})
        encoder = load_encoder(cfg.encoder, cfg.device)
        encoder.encode(texts[:16])  # load and warm up outside the timing
        runs[key] = timed(lambda enc=encoder: enc.encode(texts), synchronizer(where))
    (cpu, cpu_s), (dev, dev_s) = runs["cpu"], runs["device"]
    worst = float(np.min(np.sum(cpu * dev, axis=1)))
    return row("encode", cpu_s, dev_s, 1.0 - worst, f"cos ≥ {ENCODE_MIN_COS}", worst >= ENCODE_MIN_COS), cpu


def check_training(bank: ConceptBank, device: str) -> list[dict[str, Any]]:
    rows = []
    for family in ("lvm", "tower"):
        results = {}
        for key, where in (("cpu", "cpu"), ("device", device)):
            cfg = DualPathConfig.from_dict({**TINY, "device": where})
            with tempfile.TemporaryDirectory() as state:
                if family == "lvm":
                    split = split_from_config(bank.documents(), cfg.split)
                    task: Any = LVMTrainingTask(bank.all_vectors(), split, cfg, bank.encoder_name, bank.search)
                else:
                    task = RetrieverTask.from_bank(bank, cfg, state)
                task.model.train()
                loss, seconds = timed(lambda t=task: t.train_epoch(1, lambda: None), synchronizer(where))
                task.model.eval()
                metrics = task.evaluate()
            results[key] = (loss, seconds, metrics[task.select_metric], task.select_metric)
        (cpu_loss, cpu_s, cpu_metric, name), (dev_loss, dev_s, dev_metric, _) = results["cpu"], results["device"]
        loss_rel = abs(dev_loss - cpu_loss) / max(abs(cpu_loss), 1e-9)
        metric_diff = abs(dev_metric - cpu_metric)
        rows.append(row(f"{family} epoch: loss", cpu_s, dev_s, loss_rel, f"relative ≤ {LOSS_REL}",
                        loss_rel <= LOSS_REL))
        rows.append(row(f"{family} epoch: {name}", cpu_s, dev_s, metric_diff, f"≤ {METRIC_ABS}",
                        metric_diff <= METRIC_ABS))
    return rows


def train_models(bank: ConceptBank) -> None:
    """CPU-trained LVM and tower in the bank's models/, loaded by both generators."""
    cfg = DualPathConfig.from_dict({**TINY, "device": "cpu"})
    split = split_from_config(bank.documents(), cfg.split)
    lvm_task = LVMTrainingTask(bank.all_vectors(), split, cfg, bank.encoder_name)
    lvm_task.train_epoch(1, lambda: None)
    lvm_task.lvm.save(bank.path / "models" / "lvm")
    with tempfile.TemporaryDirectory() as state:
        tower_task = RetrieverTask.from_bank(bank, cfg, state)
        tower_task.train_epoch(1, lambda: None)
        tower_task.tower.save(bank.path / "models" / "tower")
    assert isinstance(LatentVectorModel.load(bank.path / "models" / "lvm"), LatentVectorModel)
    assert isinstance(QueryTower.load(bank.path / "models" / "tower"), QueryTower)


def check_generation(bank_path: Path, device: str, streams: int, steps: int) -> dict[str, Any]:
    runs = {}
    for key, where in (("cpu", "cpu"), ("device", device)):
        cfg = DualPathConfig.from_dict({**TINY, "device": where})
        generator = Generator.from_bank(bank_path, cfg)
        try:
            split = split_from_config(generator.bank.documents(), cfg.split)
            held = split.heldout.subset(np.arange(min(streams, len(split.heldout))))
            ctx, mask = gather_context(generator.bank.all_vectors(), held.context)
            prompts = [c[m] for c, m in zip(ctx, mask, strict=True)]
            ids = [row[row >= 0].tolist() for row in held.context]
            generator.generate_batch(prompts[:2], steps=1, context_ids=ids[:2])  # warm-up
            runs[key] = timed(lambda g=generator, p=prompts, i=ids: g.generate_batch(p, steps=steps, context_ids=i),
                              synchronizer(where))
        finally:
            generator.close()
            generator.bank.close()
    (cpu, cpu_s), (dev, dev_s) = runs["cpu"], runs["device"]
    cpu_steps = [s for stream in cpu for s in stream]
    dev_steps = [s for stream in dev for s in stream]
    same = float(np.mean([a.record.decision == b.record.decision for a, b in zip(cpu_steps, dev_steps, strict=True)]))
    cosines = [float(a.vector @ b.vector) for a, b in zip(cpu_steps, dev_steps, strict=True)]
    median = float(np.median(cosines))
    ok = same >= GEN_MIN_SAME and median >= GEN_MIN_COS
    out = row(f"generation ({len(cpu)} streams × {steps} steps)", cpu_s, dev_s, 1.0 - median,
              f"same decision ≥ {GEN_MIN_SAME:.0%}, median cos ≥ {GEN_MIN_COS}", ok)
    out["same_decision"] = same
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="cuda", help="The device compared with the CPU (default cuda).")
    parser.add_argument("--sentences", type=int, default=4000, help="Wiki-sample sentences encoded and trained on.")
    parser.add_argument("--streams", type=int, default=32, help="Generation streams.")
    parser.add_argument("--steps", type=int, default=4, help="Generation steps per stream.")
    parser.add_argument("--require-cuda", action="store_true", help=f"Exit {NO_CUDA} instead of 0 without CUDA.")
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args(argv)
    if args.against.startswith("cuda") and not cuda_available():
        print(f"CUDA is not available to torch on this machine: nothing checked (device {args.against!r}).")
        return NO_CUDA if args.require_cuda else 0
    device = resolve_device(args.against)
    started = time.perf_counter()
    docs = corpus(args.sentences)
    texts = [t for _, sentences in docs for t in sentences]
    encode_row, vectors = check_encode(texts, device)
    rows = [encode_row]
    concepts, next_id = [], 0
    for doc_id, sentences in docs:
        concepts += [Concept(next_id + i, doc_id, i, text, None, "") for i, text in enumerate(sentences)]
        next_id += len(sentences)
    with tempfile.TemporaryDirectory() as tmp:
        bank_path = Path(tmp) / "bank"
        with ConceptBank.from_vectors(bank_path, vectors, concepts, "all-MiniLM-L6-v2") as bank:
            rows += check_training(bank, device)
            train_models(bank)
        rows.append(check_generation(bank_path, device, args.streams, args.steps))
    print(f"{'check':<40} {'cpu s':>8} {device + ' s':>8} {'speed-up':>9} {'difference':>11}  tolerance")
    for r in rows:
        print(f"{r['check']:<40} {r['cpu_s']:8.2f} {r['device_s']:8.2f} {r['speedup']:8.1f}× {r['difference']:11.2e}  "
              f"{r['tolerance']}  {'ok' if r['ok'] else 'FAILED'}")
    print(f"{len(texts)} sentences, {len(docs)} documents; {time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
