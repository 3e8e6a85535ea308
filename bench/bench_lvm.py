"""LVM quality per architecture on a real bank, beside the copy-last and mean-of-context baselines.

The protocol of docs/protocol.md: held-out 10 % of the documents (never trained on), context 5, the whole bank
as the search space, the context's own concepts removed from Hit@K. Each architecture trains with
the default `LVMConfig` (only `arch` changes); the held-out table covers every model and both
baselines.

The verdict lines are the issue's targets: the best model beats both baselines on every metric
(max cos to the context: lower is better), and its Hit@10 beats the mean-of-context query. Ratios
are against the baselines measured in the same run.

    .venv/bin/python bench/bench_lvm.py [--bank /work/banks/wiki] [--arch gru,lstm,transformer]
                                        [--epochs N] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from dualpath.bank import ConceptBank
from dualpath.config import DualPathConfig
from dualpath.corpus.pairs import split_from_config
from dualpath.evaluation.lvm import COLUMNS, LVMEvaluation, evaluate_lvm
from dualpath.fileio import write_json_atomic
from dualpath.logs import configure_logging
from dualpath.models.lvm import LatentVectorModel, parameter_count
from dualpath.training.lvm import train_lvm


def train_and_evaluate(bank: ConceptBank, cfg: DualPathConfig, out: Path) -> tuple[LVMEvaluation, dict[str, Any]]:
    started = time.perf_counter()
    result = train_lvm(bank, cfg, out)
    seconds = time.perf_counter() - started
    model = LatentVectorModel.load(out, bank.dim, bank.encoder_name)
    split = split_from_config(bank.documents(), cfg.split)
    report = evaluate_lvm(model.predict, bank.all_vectors(), split.heldout, bank.search)
    info = {
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / max(1, len(result.history)), 1),
        "parameters": parameter_count(model.net),
        "best_epoch": result.best.epoch if result.best else None,
        "epochs": len(result.history),
        "config": cfg.lvm.model_dump(mode="json"),
    }
    return report, info


def print_table(rows: dict[str, dict[str, float]], info: dict[str, dict[str, Any]]) -> None:
    header = f"{'query':<18}" + "".join(f"{c:>12}" for c in COLUMNS) + f"{'train s':>10}{'params':>10}"
    print(header)
    print("-" * len(header))
    for name, row in rows.items():
        extra = info.get(name)
        tail = f"{extra['train_seconds']:>10.0f}{extra['parameters']:>10,}" if extra else ""
        print(f"{name:<18}" + "".join(f"{row[c]:>12.4f}" for c in COLUMNS) + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=Path, default=Path("/work/banks/wiki"))
    parser.add_argument("--arch", default="gru,lstm,transformer", help="comma-separated architectures")
    parser.add_argument("--epochs", type=int, default=None, help="override LVMConfig.epochs")
    parser.add_argument("--quick", action="store_true", help="2 epochs per architecture (a smoke run)")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (lvm and split sections)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    configure_logging(logging.INFO)

    bank = ConceptBank.open(args.bank)
    base = DualPathConfig.from_yaml(args.config).to_dict()
    rows: dict[str, dict[str, float]] = {}
    info: dict[str, dict[str, Any]] = {}
    baselines: LVMEvaluation | None = None
    with tempfile.TemporaryDirectory(prefix="bench_lvm_") as scratch:
        for arch in args.arch.split(","):
            lvm = {**base["lvm"], "arch": arch}
            if args.epochs or args.quick:
                lvm["epochs"] = args.epochs or 2
            cfg = DualPathConfig.from_dict({**base, "lvm": lvm})
            report, info[arch] = train_and_evaluate(bank, cfg, Path(scratch) / arch)
            rows[arch] = report.rows["lvm"]
            baselines = report
    assert baselines is not None
    for name in ("copy-last", "mean-of-context"):
        rows[name] = baselines.rows[name]

    print(
        f"\nheld-out LVM on {bank.path}: {baselines.pairs} pairs, context {base['split']['context']}, "
        f"contrastive batch {baselines.contrastive_batch}, Hit@K with the context removed"
    )
    print_table(rows, info)
    archs = list(info)
    best = max(archs, key=lambda a: rows[a]["cos"])
    copy, mean = rows["copy-last"], rows["mean-of-context"]
    print(
        f"\nbest by held-out cos: {best}  cos x{rows[best]['cos'] / copy['cos']:.3f} vs copy-last, "
        f"x{rows[best]['cos'] / mean['cos']:.3f} vs mean-of-context; "
        f"Hit@10 x{rows[best]['hit@10'] / mean['hit@10']:.3f} vs mean-of-context"
    )
    verdicts = {}
    for arch in archs:
        report = LVMEvaluation(baselines.pairs, baselines.contrastive_batch, {**rows})
        beaten = report.beats_baselines(arch)
        verdicts[arch] = beaten
        lost = [c for c, ok in beaten.items() if not ok]
        print(
            f"{arch:<12} beats both baselines on every metric: {'yes' if not lost else 'no (' + ', '.join(lost) + ')'}"
        )
    if args.json:
        write_json_atomic(
            args.json,
            {"bank": str(bank.path), "pairs": baselines.pairs, "contrastive_batch": baselines.contrastive_batch,
             "rows": rows, "models": info, "beats_baselines": verdicts, "best": best},
        )  # fmt: skip


if __name__ == "__main__":
    main()
