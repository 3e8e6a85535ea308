"""Free-running ablation on one bank: what the fed-back vector and rollout training do to what a reader sees.

For every LVM variant (rollout training steps R; R=0 is plain training) and every feedback mode
(`output`: the decided vector, `rendered`: the concept shown, `novel-rendered`: the shown concept after
NOVEL steps only), the lanes are calibrated on free-running streams (nothing is written to the bank)
and measured with `evaluate_free_running` beside its baselines: LVM-only, bank-only, the random mix
at each lane's shares and kNN continuation, all on the same held-out prompts. The LVM's successive-step
cosine (cos of v̂_t to v̂_t-1) shows whether it collapses to a fixed point when fed its own steps.

    .venv/bin/python bench/bench_free_running.py --bank BANK [--rollout 0,2] [--feedback output,rendered]
                                                 [--docs 200] [--epochs 4] [--json out.json]

BANK needs trained models (`dualpath demo`, or `dualpath train lvm` and `train retriever`).
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
from dualpath.decider import load_lanes
from dualpath.fileio import write_json_atomic
from dualpath.logs import configure_logging
from dualpath.pipeline.calibrate import calibrate_free_running, calibrate_lanes
from dualpath.pipeline.free_running import evaluate_free_running, free_running_rows
from dualpath.pipeline.generator import Generator
from dualpath.training.lvm import train_lvm

LANES = ("conservative", "neutral", "creative", "legal")


def measure(bank: ConceptBank, cfg: DualPathConfig, lvm_dir: Path | None, docs: int) -> dict[str, Any]:
    generator = Generator.from_bank(bank, cfg, lvm_dir=lvm_dir)
    shipped = {name: lane for name, lane in load_lanes(cfg.decider.lanes_file).items() if name in LANES}
    teacher, _ = calibrate_lanes(bank, generator.lvm, generator.tower, shipped, cfg)
    lanes, _ = calibrate_free_running(generator, teacher)
    return evaluate_free_running(generator, lanes, docs=docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", required=True, type=Path)
    parser.add_argument("--rollout", default="0,2", help="rollout training steps per LVM variant")
    parser.add_argument("--feedback", default="output,rendered,novel-rendered")
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=4, help="LVM epochs of each trained variant")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    configure_logging("WARNING")
    base = DualPathConfig()
    results: dict[str, Any] = {}
    with ConceptBank.open(args.bank, base) as bank, tempfile.TemporaryDirectory() as tmp:
        for rollout in (int(r) for r in args.rollout.split(",")):
            lvm_cfg = base.lvm.model_copy(update={"epochs": args.epochs, "rollout_steps": rollout})
            cfg = base.model_copy(update={"lvm": lvm_cfg})
            started = time.perf_counter()
            train_lvm(bank, cfg, Path(tmp) / f"lvm-r{rollout}")
            trained = time.perf_counter() - started
            for feedback in args.feedback.split(","):
                generation = cfg.generation.model_copy(update={"feedback": feedback})
                gen_cfg = cfg.model_copy(update={"generation": generation})
                result = measure(bank, gen_cfg, Path(tmp) / f"lvm-r{rollout}", args.docs)
                key = f"rollout {rollout}, feedback {feedback}"
                results[key] = {"train_seconds": trained, **result}
                print(f"\n## {key} ({result['prompts']} prompts from {result['docs']} held-out documents; "
                      f"LVM trained in {trained:.0f} s)")
                print("| lane | repeat | distinct | cos to truth (text) | cos (vector) | grounded | SNAP/BLEND/NOVEL "
                      "| LVM successive cos |")
                print("|---|---|---|---|---|---|---|---|")
                for row in free_running_rows(result):
                    successive = row["successive_lvm_cos"]
                    print(f"| {row['name']} | {row['repeat_rate']:.1%} | {row['distinct_per_stream']:.2f} | "
                          f"{row['cos_true']:.4f} | {row['cos_true_output']:.4f} | {row['grounded_share']:.1%} | "
                          f"{row['snap']:.0%}/{row['blend']:.0%}/{row['novel']:.0%} | "
                          f"{'-' if successive is None else f'{successive:.3f}'} |")
    if args.json:
        write_json_atomic(args.json, results)
    logging.shutdown()


if __name__ == "__main__":
    main()
