"""The demo: the whole system on the Wikipedia sample, from nothing to a report, each stage cached.

Stages (each skipped when its output is already there and was made with the same settings):
  1. bank      build a bank from the wiki sample (a subset by default, all ~10k articles with `full`)
  2. lvm       train the LVM briefly
  3. tower     train the query tower briefly
  4. sampler   train the LVM's sampler (the spread of next vectors around the LVM's mean)
  5. add       add more articles to the bank after training (`bank add`: knowledge without retraining)
  6. calibrate fit the SNAP confidence and set each lane's levels on held-out documents
  7. generate  a prompt for each case a user meets, in every lane
  8. report    the Markdown report with plots
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualpath.bank import ConceptBank
from dualpath.bank.layout import lvm_dir, tower_dir
from dualpath.config import DualPathConfig
from dualpath.corpus import WIKI_SAMPLE
from dualpath.corpus.sources import load_documents
from dualpath.decider import Lane
from dualpath.errors import DualPathError
from dualpath.fileio import write_json_atomic
from dualpath.models.checkpoint import BEST
from dualpath.models.sampler import sampler_dir
from dualpath.pipeline.calibrate import CALIBRATION_VERSION, calibrate_bank
from dualpath.pipeline.calibrated_lanes import read_calibration
from dualpath.pipeline.generator import GenerationStep, Generator, PromptMatch
from dualpath.pipeline.report import measure, write_report
from dualpath.training.lvm import train_lvm, train_lvm_sampler
from dualpath.training.retriever import train_retriever

log = logging.getLogger(__name__)

DEMO_DOCS = 3000  # articles in the default subset: the cold demo fits in minutes on two cores
ADDED_DOCS = 200  # the articles after them, added once the models are trained (the "added" case)
# One prompt for each case a user meets (docs/protocol.md), and one typed in a user's own words:
DEMO_PROMPTS = {
    # known: the opening of a bank article the models trained on; the stream should walk its continuation.
    "known": "The budgerigar, also known as the common parakeet, shell parakeet or budgie, is a small, long-tailed, "
    "seed-eating parrot native to Australia. Naturally, the species is green and yellow with black, scalloped "
    "markings on the nape, back, and wings.",
    # added: the opening of an article added with `bank add` after training; grounded the same way.
    "added": "Mount Kenya is the second highest mountain in Africa and the namesake of the country Kenya.",
    # restated: the Budgerigar article said in other words; the bank holds the article, not this wording.
    "restated": "The budgerigar is a small parrot native to Australia. It is often kept as a pet.",
    # unknown: the demo bank has no article on the Moon; every lane should stay NOVEL and say so.
    "unknown": "The Moon is Earth's only natural satellite. It orbits the planet at an average distance of "
    "384,400 km.",
}
DEMO_LANES = ("conservative", "neutral", "creative", "legal", "quota-neutral")  # the shipped lanes, the baseline
STAMP = "demo-stages.json"
REPORT_VERSION = 3  # 3: the three cases a user meets


@dataclass
class DemoResult:
    out: Path
    bank: Path
    report: Path
    stages: dict[str, str] = field(default_factory=dict)  # stage → "built in 12 s" / "cached"
    generations: dict[str, dict[str, list[GenerationStep]]] = field(default_factory=dict)  # prompt → lane → steps
    cases: dict[str, str] = field(default_factory=dict)  # prompt → the case it stands for (known, added, ...)
    lanes: dict[str, Lane] = field(default_factory=dict)  # the lanes generated in, as calibrated on the bank
    prompt_matches: dict[str, list[PromptMatch]] = field(default_factory=dict)  # prompt → its sentences in the bank


def demo_config(cfg: DualPathConfig | None = None) -> DualPathConfig:
    """Brief training: the demo shows the system working, `bench/` measures how well it can do."""
    cfg = cfg or DualPathConfig()
    return cfg.model_copy(
        update={
            "lvm": cfg.lvm.model_copy(update={"epochs": min(cfg.lvm.epochs, 4)}),
            "tower": cfg.tower.model_copy(update={"epochs": min(cfg.tower.epochs, 3)}),
            # The held-out spread and sample cosine settle within ~5 epochs (docs/lvm.md).
            "sampler": cfg.sampler.model_copy(update={"epochs": min(cfg.sampler.epochs, 10)}),
        }
    )


def run_demo(
    out: str | Path = "demo-output",
    full: bool = False,
    fresh: bool = False,
    cfg: DualPathConfig | None = None,
    steps: int = 4,
    prompts: list[str] | None = None,
    limit_docs: int | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    source: str = WIKI_SAMPLE,
) -> DemoResult:
    """Run (or resume) the demo in `out`; returns where everything is and the generations.

    `source` is the corpus (the Wikipedia sample by default; the benchmark suite runs the same stages
    on `python-docs`, its second corpus)."""
    cfg = demo_config(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bank_dir = out / "bank"
    limit = None if full else (limit_docs or DEMO_DOCS)
    stamps = _read_stamps(out) if not fresh else {}
    result = DemoResult(out, bank_dir, out / "report" / "report.md")

    def stage(name: str, key: dict[str, Any], present: bool, work: Callable[[], None]) -> None:
        digest = _digest(key)
        if present and stamps.get(name) == digest:
            result.stages[name] = "cached"
        else:
            t0 = time.perf_counter()
            work()
            stamps[name] = digest
            # Later stages depend on this one: a rebuilt stage invalidates everything after it.
            for later in STAGES[STAGES.index(name) + 1 :]:
                stamps.pop(later, None)
            write_json_atomic(out / STAMP, stamps)
            result.stages[name] = f"done in {time.perf_counter() - t0:.0f} s"
        if on_stage is not None:
            on_stage(name, result.stages[name])

    # What the bank holds, not how it is built: a knob like build_batch must not throw away a cached bank.
    bank_key = {"source": source, "limit": limit, "encoder": cfg.encoder.name, "segment": cfg.segment.model_dump(),
                "bank": cfg.bank.model_dump(mode="json", exclude={"build_batch"})}
    stage("bank", bank_key, (bank_dir / "manifest.json").is_file(),
          lambda: ConceptBank.build(source, bank_dir, cfg, limit_docs=limit, force=True).close())
    bank = ConceptBank.open(bank_dir, cfg)
    try:
        train_key = {"split": cfg.split.model_dump(), "lvm": cfg.lvm.model_dump(), "bank": bank_key}
        # The LVM, then its sampler as a stage of its own (a cache from before samplers keeps its LVM).
        no_sampler = cfg.model_copy(update={"sampler": cfg.sampler.model_copy(update={"epochs": 0})})
        stage("lvm", train_key, (lvm_dir(bank_dir) / BEST).is_dir(),
              lambda: train_lvm(bank, no_sampler, lvm_dir(bank_dir)))
        # Knobs added after caches existed count only when set: at their default they train the same tower.
        unset = {name for name in ("mine_pairs", "eval_pairs") if getattr(cfg.tower, name) is None}
        tower_key = {"split": cfg.split.model_dump(), "tower": cfg.tower.model_dump(mode="json", exclude=unset),
                     "bank": bank_key}
        stage("tower", tower_key, (tower_dir(bank_dir) / BEST).is_dir(),
              lambda: train_retriever(bank, cfg, tower_dir(bank_dir)))
        if cfg.sampler.epochs:
            stage("sampler", {"sampler": cfg.sampler.model_dump(), "lvm": train_key},
                  (sampler_dir(lvm_dir(bank_dir)) / BEST).is_dir(),
                  lambda: train_lvm_sampler(bank, cfg, lvm_dir(bank_dir)))
        if limit is not None and source == WIKI_SAMPLE:  # the full sample has nothing left to add
            added = limit + ADDED_DOCS
            stage("add", {"after": limit, "docs": ADDED_DOCS, "bank": bank_key}, len(bank.documents()) >= added,
                  lambda: bank.add(itertools.islice(load_documents(source), limit, added)))
        generator = Generator.from_bank(bank, cfg, calibrating=True)  # the next stage calibrates it if need be
        try:
            calibrate_key = {"lanes": cfg.decider.model_dump(mode="json"), "version": CALIBRATION_VERSION,
                             "lvm_temperature": cfg.generation.lvm_temperature}
            stage("calibrate", calibrate_key,
                  read_calibration(bank_dir) is not None,
                  lambda: _calibrate(generator, cfg))
            result.lanes = {name: generator.lane(name) for name in DEMO_LANES}
            chosen = {prompt: "" for prompt in prompts} if prompts else {p: c for c, p in DEMO_PROMPTS.items()}
            for prompt, case in chosen.items():
                result.cases[prompt] = case
                result.prompt_matches[prompt] = generator.match_prompt(prompt)  # every lane reads the prompt alike
                result.generations[prompt] = {
                    lane: list(generator.generate(prompt, steps=steps, lane=lane))
                    for lane in DEMO_LANES
                }
            result.stages["generate"] = f"{len(result.generations)} prompts x 4 lanes"
            stage("report", {"report": REPORT_VERSION}, result.report.is_file(),
                  lambda: write_report(measure(generator, cfg, max_pairs=1500, free_docs=200), out / "report"))
        finally:
            generator.close()
    finally:
        bank.close()
    return result


STAGES = ["bank", "lvm", "tower", "sampler", "add", "calibrate", "report"]


def _calibrate(generator: Generator, cfg: DualPathConfig) -> None:
    calibrate_bank(generator.bank, generator.lvm, generator.tower, cfg, generator=generator)
    generator.apply_calibration()  # it was opened before calibration existed


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_stamps(out: Path) -> dict[str, str]:
    path = out / STAMP
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValueError) as err:
        raise DualPathError(f"{path} is corrupt ({err}); rerun with --fresh") from None
