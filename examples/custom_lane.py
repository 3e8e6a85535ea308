"""Add your own lane in YAML, calibrate it on a bank, and see it move the decision mix.

    python examples/custom_lane.py BANK_DIR

BANK_DIR is a bank with trained models (e.g. `demo-output/bank` after `make demo`, or
WORKDIR/bank after `python examples/generate_in_python.py WORKDIR`; WORKDIR itself works too).
The lane is stated as target shares of SNAP / BLEND / NOVEL; calibration turns them into
thresholds in this bank's embedding space.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from dualpath.bank import ConceptBank
from dualpath.config import DualPathConfig
from dualpath.logs import configure_logging
from dualpath.pipeline.calibrate import calibrate_lanes
from dualpath.pipeline.evaluate import evaluate_generation
from dualpath.pipeline.generator import Generator

LANES_YAML = """
lanes:
  archivist:                     # grounds almost everything on real bank concepts
    tau_snap: 0.70               # uncalibrated starting point; calibration replaces it
    tau_novel: 0.60
    k: 200
    dup_window: 8
    shares: {snap: 0.6, blend: 0.3, novel: 0.1}
  poet:                          # keeps the LVM's own vectors unless a match is near-certain
    tau_snap: 0.90
    tau_novel: 0.80
    k: 200
    dup_window: 8
    shares: {snap: 0.02, blend: 0.18, novel: 0.8}
"""


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    configure_logging("WARNING")
    lanes_file = Path(tempfile.mkdtemp()) / "my-lanes.yaml"
    lanes_file.write_text(LANES_YAML)
    cfg = DualPathConfig.from_dict({"decider": {"lanes_file": str(lanes_file)}})
    path = Path(sys.argv[1])
    # generate_in_python.py writes its bank to WORKDIR/bank: accept the folder a user just used there.
    if not (path / "manifest.json").exists() and (path / "bank" / "manifest.json").exists():
        path = path / "bank"
    bank = ConceptBank.open(path, cfg)
    generator = Generator.from_bank(bank, cfg)

    # Calibrate the user's lanes in memory (`dualpath calibrate --lanes FILE` would store them in the bank).
    mine = {name: generator.lanes[name] for name in ("archivist", "poet")}
    lanes, _ = calibrate_lanes(bank, generator.lvm, generator.tower, mine, cfg, max_pairs=2000)
    result = evaluate_generation(bank, generator.lvm, generator.tower, lanes, cfg, max_pairs=2000)
    for name, row in result["lanes"].items():
        mix = ", ".join(f"{d} {v['share']:.0%}" for d, v in row["by_decision"].items() if v["share"])
        print(f"{name:<10} tau_snap {row['tau_snap']:.3f} tau_novel {row['tau_novel']:.3f}  {mix}  "
              f"mean cos {row['mean_cos']:.3f}")
    generator.close()
    bank.close()


if __name__ == "__main__":
    main()
