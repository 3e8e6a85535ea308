"""The suite: every section on one bank, written as results.json, results.md and machine.md.

    run_suite(out, quick=True)            builds (or reuses) the cached demo-size bank under out/
    run_suite(out, bank=path)             runs on an existing bank with trained models
    run_suite(out, sizes=SuiteSizes(...)) any sizes (the tests use tiny ones)

Without a bank, the suite makes one with `pipeline.demo.run_demo` in `out/bank-cache/<quick|full>`:
the demo-size subset of the Wikipedia sample (quick) or all of it (full), briefly trained and
calibrated, each stage cached by a digest of its settings, so only the first run pays for it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dualpath.bank import ConceptBank
from dualpath.benchsuite import generation_scale, quality, scale, search, stages, training
from dualpath.benchsuite.decider import BASELINE as DECISION_BASELINE
from dualpath.benchsuite.decider import HOT_BASELINE as DECISION_HOT_BASELINE
from dualpath.benchsuite.decider import bench_decisions
from dualpath.benchsuite.machine import describe_machine, machine_markdown
from dualpath.benchsuite.synthetic import synthetic_set
from dualpath.benchsuite.tables import Section, finite_or_none, render_markdown
from dualpath.benchsuite.timing import with_ratio
from dualpath.config import DualPathConfig
from dualpath.corpus import PYTHON_DOCS
from dualpath.fileio import check_output_directory, output_directory, write_json_atomic, write_text_atomic
from dualpath.pipeline.demo import DEMO_DOCS, DEMO_PROMPTS, run_demo
from dualpath.pipeline.generator import Generator
from dualpath.pipeline.report import measure

log = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
MACHINE_MD = "machine.md"
CACHE = "bank-cache"
SECTIONS = (
    "encode", "lvm_step", "tower", "decision", "generation", "generation_scale", "search", "training", "quality",
    "second_corpus", "scale",
)


@dataclass(frozen=True)
class SuiteSizes:
    """How much of everything a run measures."""

    name: str
    demo_docs: int | None  # articles of the cached bank; None = the whole Wikipedia sample
    synthetic: tuple[int, ...]  # sizes of the synthetic clustered vector sets
    queries: int  # held-out queries per vector set (recall, batched search)
    single_queries: int  # of them, searched one at a time (latency)
    single_calls: int  # one-item calls timed per stage (encode, LVM, tower)
    batch_sizes: tuple[int, ...]  # batched LVM / tower calls
    encode_batch: int
    encode_calls: int
    decision_steps: int
    decision_batch: int
    generation_prompts: int
    generation_steps: int
    generation_batches: tuple[int, ...]  # streams per generate_batch call
    training_pairs: int  # per architecture, for the training-speed epoch
    tower_epochs: int  # each tower kind's training before its retrieval is compared (the first one timed)
    quality_pairs: int  # held-out pairs of the dual-path evaluation
    free_docs: int  # held-out documents of the free-running test
    second_corpus: str | None = None  # every quality claim is measured on a second corpus of another kind too
    scale: int = 0  # synthetic concepts built into a bank and trained on with bounded memory (0: not measured)
    scale_epochs: int = 2  # LVM epochs at that size (resident memory after each)
    encode_processes: int = 0  # sentences encoded in one process and in two (0: not measured)
    # The generation rows on a synthetic bank of this many vectors with IVF and HNSW (None: skipped), at each K.
    generation_scale: int | None = None
    generation_scale_ks: tuple[int, ...] = (500, 100)


QUICK = SuiteSizes(
    name="quick", demo_docs=DEMO_DOCS, synthetic=(10_000, 100_000), queries=256, single_queries=100,
    single_calls=60, batch_sizes=(32, 256), encode_batch=64, encode_calls=4, decision_steps=300,
    decision_batch=32, generation_prompts=12, generation_steps=4, generation_batches=(32, 256), training_pairs=6_000,
    tower_epochs=3, quality_pairs=1_000, free_docs=200,
)
FULL = SuiteSizes(
    name="full", demo_docs=None, synthetic=(10_000, 100_000, 1_000_000), queries=1_024, single_queries=500,
    single_calls=300, batch_sizes=(32, 256), encode_batch=64, encode_calls=16, decision_steps=1_000,
    decision_batch=64, generation_prompts=50, generation_steps=8, generation_batches=(32, 256), training_pairs=10_000,
    tower_epochs=3, quality_pairs=4_000, free_docs=200, second_corpus=PYTHON_DOCS, scale=1_000_000,
    encode_processes=2_000, generation_scale=1_000_000,
)


@dataclass
class SuiteResult:
    out: Path
    bank: Path
    results: dict[str, Any]


def prepare_bank(cache: Path, sizes: SuiteSizes, cfg: DualPathConfig) -> Path:
    """The cached demo bank with trained, calibrated models (built on the first run, reused after)."""
    def on_stage(name: str, status: str) -> None:
        log.info("bench bank: %s %s", name, status)

    result = run_demo(
        cache, full=sizes.demo_docs is None, cfg=cfg, steps=1, prompts=[DEMO_PROMPTS["known"]],
        limit_docs=sizes.demo_docs, on_stage=on_stage,
    )
    return result.bank


def run_suite(
    out: str | Path,
    quick: bool = False,
    bank: str | Path | ConceptBank | None = None,
    cfg: DualPathConfig | None = None,
    sizes: SuiteSizes | None = None,
    on_section: Callable[[str, float], None] | None = None,
    only: Sequence[str] = (),
) -> SuiteResult:
    """Run every section and write out/results.json, out/results.md and out/machine.md.

    `bank` is a bank directory (or an opened ConceptBank, kept open) with trained models in
    models/; without one the cached Wikipedia-sample bank under `out` is built or reused. `only`
    names the sections to run (default: all; see `SECTIONS`).
    """
    cfg = cfg or DualPathConfig()
    sizes = sizes or (QUICK if quick else FULL)
    out = check_output_directory(out)  # a file at `out` is refused; other files inside it are left alone
    started = time.perf_counter()
    machine_start = describe_machine()
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    own_bank = bank is not None
    if bank is None:
        bank = prepare_bank(out / CACHE / sizes.name, sizes, cfg)
    generator = Generator.from_bank(bank, cfg)  # a missing bank or model fails here, before anything is written
    bank_path = generator.bank.path
    run = {"quick": quick, "own_bank": own_bank, "only": list(only), "bank_concepts": len(generator.bank)}
    seconds["bank"] = time.perf_counter() - t0
    # A directory of this run's own (never a fixed name that may hold someone's files), removed after.
    workdir = Path(tempfile.mkdtemp(prefix=".work.", dir=output_directory(out)))
    try:
        runner = _Sections(generator, cfg, sizes, workdir, out / CACHE)
        sections: dict[str, Section] = {}
        for name, make in runner.plan():
            if only and name not in only:
                continue
            t0 = time.perf_counter()
            log.info("bench: %s", name)
            sections.update(make())
            seconds[name] = time.perf_counter() - t0
            if on_section is not None:
                on_section(name, seconds[name])
        quality_raw = runner.quality_results
        second_raw = runner.second_results
    finally:
        generator.close()
        if not isinstance(bank, ConceptBank):
            generator.bank.close()
        shutil.rmtree(workdir, ignore_errors=True)

    total = time.perf_counter() - started
    machine_end = describe_machine()
    results = finite_or_none({
        "suite": {"sizes": asdict(sizes), "bank": str(bank_path), "seconds": total, "section_seconds": seconds,
                  "run": run},
        "machine": {"start": machine_start, "end": machine_end},
        "sections": {key: s.to_dict() for key, s in sections.items()},
        "quality": {k: v for k, v in quality_raw.items() if k not in ("settings",)},
        "quality_second_corpus": {k: v for k, v in second_raw.items() if k not in ("settings",)},
    })
    for key in ("quality", "quality_second_corpus"):
        results[key].get("generation", {}).pop("c_max_sample", None)
    write_json_atomic(out / RESULTS_JSON, results)
    write_text_atomic(out / RESULTS_MD, render_markdown(results["sections"], _header(results, sizes)))
    write_text_atomic(out / MACHINE_MD, machine_markdown(machine_start, machine_end, total, sizes.name == "quick"))
    return SuiteResult(out, bank_path, results)


def _header(results: dict[str, Any], sizes: SuiteSizes) -> str:
    m = results["machine"]["start"]
    load = " / ".join(f"{x:.1f}" for x in m["load_average"])
    return "\n".join([
        f"# dualpath benchmarks ({sizes.name})",
        "",
        f"Bank `{results['suite']['bank']}`; {m['logical_cores']} cores ({m['cpu_model']}), load average {load} "
        f"at the start (machine.md). Every ratio is against a baseline measured in this run: × below 1 is faster "
        f"(or smaller) than the baseline.",
        "",
    ])


class _Sections:
    """Each section as a method returning {key: Section}; `plan()` lists them in the order they run."""

    def __init__(
        self, generator: Generator, cfg: DualPathConfig, sizes: SuiteSizes, workdir: Path, cache: Path
    ) -> None:
        self.generator = generator
        self.bank = generator.bank
        self.cfg = cfg
        self.sizes = sizes
        self.workdir = workdir
        self.lane = generator.lane(None)
        n_ctx = max(sizes.queries, *sizes.batch_sizes)
        self.pairs, self.ctx, self.mask = stages.heldout_contexts(generator, cfg, n_ctx)
        self.quality_results: dict[str, Any] = {}
        self.second_results: dict[str, Any] = {}
        self.cache = cache

    def plan(self) -> list[tuple[str, Callable[[], dict[str, Section]]]]:
        return [
            ("encode", self.encode),
            ("lvm_step", self.lvm_step),
            ("tower", self.tower),
            ("decision", self.decision),
            ("generation", self.generation),
            ("generation_scale", self.generation_scale),
            ("search", self.search),
            ("training", self.training),
            ("quality", self.quality),
            ("second_corpus", self.second_corpus),
            ("scale", self.scale),
        ]

    def encode(self) -> dict[str, Section]:
        s = self.sizes
        rng = np.random.default_rng(0)
        ids = rng.choice(len(self.bank), size=min(len(self.bank), max(s.single_calls, s.encode_batch * s.encode_calls)),
                         replace=False)
        encoder = self.bank.encoder()
        encoder.encode(self.bank.texts(ids[:8]))  # load and warm the model outside the timings
        rows = stages.bench_encode(encoder, self.bank.texts(ids), s.single_calls, s.encode_batch, s.encode_calls)
        note = (f"`{self.bank.encoder_name}` on {len(ids)} sentences of the bank; batched rows are per sentence. "
                "Baseline: one sentence per call.")
        return {"encode": Section("Encode (sentences → vectors)", note, stages.TIMING_COLUMNS, rows)}

    def lvm_step(self) -> dict[str, Section]:
        lvm = self.generator.lvm
        rows = stages.bench_lvm(self.generator, self.ctx, self.mask, self.sizes.single_calls, self.sizes.batch_sizes)
        note = (f"`LatentVectorModel.predict`, {lvm.arch}, context {lvm.context}, on held-out contexts; batched rows "
                "are per context. Baseline: one context per call.")
        return {"lvm_step": Section("LVM step", note, stages.TIMING_COLUMNS, rows)}

    def tower(self) -> dict[str, Section]:
        rows = stages.bench_tower(self.generator, self.ctx, self.mask, self.sizes.single_calls, self.sizes.batch_sizes)
        tower = self.generator.tower
        note = ("The bank has no trained query tower." if tower is None else
                f"`QueryTower.encode_queries`, {tower.cfg.tower}, on held-out contexts; batched rows are per "
                "context. Baseline: one context per call.")
        return {"tower": Section("Query tower", note, stages.TIMING_COLUMNS, rows)}

    def decision(self) -> dict[str, Section]:
        s = self.sizes
        k = self.lane.k
        measured = bench_decisions(self.bank.dim, s.decision_steps, s.decision_batch, k)
        hot = {name: row for name, row in measured.items() if name.endswith("in cache")}
        rows = with_ratio({n: r for n, r in measured.items() if n not in hot}, DECISION_BASELINE)
        rows += with_ratio(hot, DECISION_HOT_BASELINE)
        note = (f"K = {k} candidates (lane `{self.lane.name}`), d = {self.bank.dim}, random shortlists with one "
                f"planted neighbour per stream; the batched row is per stream. The first rows cycle through "
                f"{s.decision_batch} shortlists, read from memory each call; the last two decide one shortlist over "
                "and over, in cache, as the generator's just-read shortlist is. Baseline: the K cosines and argmax "
                "any decision needs (one BLAS mat-vec), for the rows in cache its run in cache.")
        return {"decision": Section("Decision", note, stages.TIMING_COLUMNS, rows)}

    def generation(self) -> dict[str, Section]:
        s = self.sizes
        prompts = stages.generation_prompts(self.generator, self.cfg, s.generation_prompts)
        rows, counts = stages.bench_generation(self.generator, self.lane, prompts, s.generation_steps,
                                               s.generation_batches)
        source = "tower" if self.generator.tower is not None else "LVM vector"
        sizes = " and ".join(str(b) for b in s.generation_batches)
        note = (f"`Generator.generate` in lane `{self.lane.name}` (K = {self.lane.k}, query from the {source}, "
                f"index `{self.bank.index_spec}`): {counts['steps']} steps from {counts['prompts']} two-concept "
                "prompts of held-out documents; the parts are the step's own stage latencies. The models keep "
                "per-stream state (`generation.incremental`); the reference row re-reads the window each step. "
                f"`Generator.generate_batch` runs {sizes} streams of the same prompts (time per stream-step; per s "
                "is stream-steps per second). Baseline: the whole single step. "
                f"Retrieval fallbacks (timeout, error): {counts['fallbacks']}; steps with no result or every "
                f"candidate refused (NOVEL, reason `empty`): {counts['empty']}.")
        sections = {"generation": Section("Generation step", note, stages.TIMING_COLUMNS, rows)}
        batch = max(s.generation_batches)
        floor_rows = stages.stage_floors(self.generator, self.lane, prompts, rows, batch,
                                          counts["render"])
        floor_note = (f"The single step and the {batch}-stream step of the table above (per stream), each stage "
                      "beside its floor: the same work with nothing around it, timed right after on the same shapes, "
                      "weights and shortlists, on one thread. The model floors are the BLAS products alone (no "
                      "activations, no framework); the search floor is the index call alone plus reading the "
                      "shortlist's rows; the decide floor is the step's own vectors at unit length, one pass over "
                      "each shortlist (its K×d scores and an argmax), in a lane that grounds on evidence the "
                      "anchors' successors its shortlist lacks read from the bank and scored, and the pick checked "
                      "against what the stream said (its prompt at the first step); cold floors are medians of at "
                      f"least {stages.BATCH_FLOOR_CALLS} calls; the render floor an argmax over the step's scores, one "
                      "pass over the shortlist for the share of stream-steps that score it anew (not a SNAP, and "
                      "no scores of the same output "
                      "from the decision to reuse), and the index search alone for the share whose text no "
                      "shortlist proves (they take a rendering search). A stage far above its floor "
                      "spends its time around the work; one near it is held by the work itself.")
        sections["generation_floors"] = Section("Generation step, each stage beside its floor", floor_note,
                                                stages.FLOOR_COLUMNS, floor_rows)
        if self.bank.index_spec in ("Flat", "SQfp16"):  # the same vectors under each approximate index
            kinds, queries = generation_scale.KINDS, next(self._vector_sets()).queries
            index_rows, facts = generation_scale.bench_generation_per_index(
                self.generator, self.lane, np.asarray(self.bank.all_vectors(), np.float32), queries, prompts,
                (self.lane.k,), s.generation_steps, s.generation_batches, self.workdir, self.cfg, kinds,
            )
            base = next(r["median_ms"] for r in rows if r["name"] == "whole step (baseline)")
            index_rows = [{**r, "x_baseline": r["median_ms"] / base} for r in index_rows]
            builds = ", ".join(f"`{b['index']}` built in {b['build_s']:.1f} s" for b in facts["builds"].values())
            tuned = "; ".join(f"`{facts['builds'][kind]['index']}` {t['knob']} " + "/".join(map(str, t["settings"]))
                              + " at k ≤ " + "/".join(map(str, t["depths"]))
                              for kind, t in facts.get("search", {}).items() if t)
            settings = (f"search settings tuned to recall {self.cfg.bank.recall:.2f} per depth: {tuned}"
                        if tuned else f"nprobe {self.cfg.bank.nprobe}, efSearch {self.cfg.bank.ef_search}, at least K")
            index_note = (f"The rows above on this bank's own {len(self.bank):,} vectors and prompts, indexed "
                          f"approximately ({builds}; {settings}), each beside its recall@10 and its recall at the "
                          "step's depth K against exact search "
                          "for the query tower's queries of held-out contexts. Texts are placeholders; every other "
                          "part is the bank's. Baseline: the whole single step on the bank's own "
                          f"`{self.bank.index_spec}` index above. "
                          f"Retrieval fallbacks (timeout, error): {sum(facts['fallbacks'].values())}; steps with no "
                          f"result or every candidate refused (NOVEL, `empty`): {sum(facts['empty'].values())}.")
            sections["generation_index"] = Section(
                "Generation step per index kind, this bank's vectors", index_note,
                {**generation_scale.SCALE_COLUMNS, "x_baseline": "× flat step"}, index_rows,
            )
        return sections

    def generation_scale(self) -> dict[str, Section]:
        s = self.sizes
        if s.generation_scale is None:
            return {}
        rows, facts = generation_scale.bench_generation_scale(
            self.generator, self.lane, s.generation_scale, s.generation_scale_ks, s.generation_prompts,
            s.generation_steps, s.generation_batches, self.workdir, self.cfg,
        )
        builds = ", ".join(f"{kind} `{b['index']}` built in {b['build_s']:.0f} s"
                           for kind, b in facts["builds"].items())
        note = (f"The generation rows on {_size_name(s.generation_scale)} synthetic clustered {self.bank.dim}-d "
                f"vectors (one set, made once; {builds}; nprobe {self.cfg.bank.nprobe}, efSearch "
                f"{self.cfg.bank.ef_search} at least K, not tuned: generation_scale.py says why), lane "
                f"`{self.lane.name}` at each K, each beside its index's recall@10 and recall@K "
                f"against exact float32 search on the same bank in this run. The LVM and query tower are this "
                "bank's own (same shapes as in production; on synthetic vectors only their cost means anything). "
                "Batched rows: time per stream-step, per s = stream-steps per second. Baseline: the whole single "
                f"step of the same index and K. Retrieval fallbacks (timeout, error): "
                f"{sum(facts['fallbacks'].values())}; steps with no result or every candidate refused (NOVEL, "
                f"`empty`): {sum(facts['empty'].values())}.")
        floor_note = (f"Each stage of the single step and of the {max(s.generation_batches)}-stream step above beside "
                      "its floor, per index and K, as in the generation step's stage table (same run).")
        return {
            "generation_scale": Section(
                f"Generation step at {_size_name(s.generation_scale)} vectors", note, generation_scale.SCALE_COLUMNS,
                _ratios_per_group(rows),
            ),
            "generation_scale_floors": Section(
                f"Generation step at {_size_name(s.generation_scale)} vectors, each stage beside its floor",
                floor_note, {"index": "index", "k": "K", **stages.FLOOR_COLUMNS}, facts["floors"],
            ),
        }

    def search(self) -> dict[str, Section]:
        s = self.sizes
        search_rows, memory_rows = [], []
        for data in self._vector_sets():
            found, memory = search.bench_vector_set(data, self.workdir, s.single_queries, self.cfg)
            search_rows += found
            memory_rows += memory
        search.add_marginal_memory([r for r in memory_rows if r["vectors"].startswith("synthetic")], self.bank.dim)
        note = (f"k = {search.K} through `ConceptBank.search` on banks built from the vectors (dtype "
                f"{self.cfg.bank.dtype}); real queries are the query tower's for held-out contexts, synthetic "
                "ones come from the same clusters as the vectors. One query per call on one FAISS thread; batches "
                f"of up to {search.BATCH} on all cores. Recall@10 against exact float32 search. Baseline: `flat`.")
        mem_note = ("Resident memory an opened bank adds to a fresh process (index + metadata; vectors.npy is "
                    "memory-mapped), per million vectors, against the raw float32 matrix. Small banks are dominated "
                    "by fixed costs; the marginal columns take the difference between two synthetic sizes.")
        return {
            "search": Section("Search", note, search.SEARCH_COLUMNS, search_rows),
            "memory_bank": Section("Memory: opened bank", mem_note, search.MEMORY_COLUMNS, memory_rows),
        }

    def _vector_sets(self) -> Iterator[search.VectorSet]:
        """The bank's own vectors with real queries, then each synthetic size (made one at a time)."""
        n = self.sizes.queries
        ctx, mask = stages.repeat_rows(self.ctx, n), stages.repeat_rows(self.mask, n)
        tower = self.generator.tower
        queries = tower.encode_queries(ctx, mask) if tower is not None else self.generator.lvm.predict(ctx, mask)
        yield search.VectorSet(f"bank {len(self.bank):,} (real)", self.bank.all_vectors(), queries)
        for size in self.sizes.synthetic:
            vectors, synthetic_queries = synthetic_set(size, n, self.bank.dim)
            yield search.VectorSet(f"synthetic {_size_name(size)}", vectors, synthetic_queries)

    def training(self) -> dict[str, Section]:
        s = self.sizes
        rows, towers, heldout = training.bench_training(self.bank, self.cfg, s.training_pairs, self.workdir,
                                                        s.tower_epochs)
        note = (f"One epoch of each architecture through its trainer's `train_epoch` on the same {rows[0]['pairs']:,} "
                "training pairs; s/epoch projected to the bank's whole training split. Baseline: the configured "
                f"architecture (LVM {self.cfg.lvm.arch}, tower {self.cfg.tower.tower}).")
        memory_rows = training.training_memory(self.bank.path)
        mem_note = ("Resident memory of the training process after each epoch, as the training loop recorded it in "
                    "the bank's models/*/history.json (the whole process: bank, data and model). Baseline: epoch 1.")
        pairs = rows[0]["pairs"]
        tower_note = (f"Every tower kind after {s.tower_epochs} epoch(s) on the same {pairs:,} pairs (the first is "
                      "the timed one above; in-batch negatives and the queue, no mining), evaluated on the "
                      f"{heldout:,} held-out pairs of those documents with the whole bank searched and the context "
                      "excluded: the kinds compared after identical brief training (the fully trained tower is in "
                      "Quality: retrieval). Baseline: the best heuristic query.")
        return {
            "training": Section("Training speed", note, training.SPEED_COLUMNS, rows),
            "tower_kinds": Section("Quality: each tower kind, briefly trained", tower_note, quality.RETRIEVAL_COLUMNS,
                                   quality.retrieval_table_rows(towers)),
            "memory_training": Section("Memory: training", mem_note, training.MEMORY_COLUMNS, memory_rows),
        }

    def quality(self) -> dict[str, Section]:
        s = self.sizes
        self.quality_results = measure(self.generator, self.cfg, max_pairs=s.quality_pairs, free_docs=s.free_docs)
        r = self.quality_results
        gen = r["generation"]
        return {
            "retrieval_quality": Section(
                "Quality: retrieval", f"{r['retrieval']['pairs']:,} held-out pairs, context excluded from every "
                "result list (docs/protocol.md). Baseline: the best heuristic query.",
                quality.RETRIEVAL_COLUMNS, quality.retrieval_rows(r)),
            "lvm_quality": Section(
                "Quality: LVM", f"{r['lvm']['pairs']:,} held-out pairs; contrastive accuracy within batches of "
                f"{r['lvm']['contrastive_batch']}. Baseline: copy-last.", quality.LVM_COLUMNS, quality.lvm_rows(r)),
            "dual_path_quality": Section(
                "Quality: dual path", f"Teacher-forced on {gen['pairs']:,} held-out pairs (retrieval query from the "
                f"{gen['query_source']}); mean cos of the output to the true next concept, hit@5 of the true next "
                "concept around the output; free-running: mean cos over generated steps of held-out documents. "
                "Baselines: LVM-only and bank-only (the same code with extreme thresholds).",
                quality.DUAL_PATH_COLUMNS, quality.dual_path_rows(r)),
            **quality.case_sections(r, f"the benchmark bank ({len(self.bank):,} concepts)", "grounding_cases"),
            **quality.free_running_sections(r, f"the benchmark bank ({len(self.bank):,} concepts)",
                                            "free_running_quality"),
        }

    def second_corpus(self) -> dict[str, Section]:
        """The dual path's quality on the second corpus: its own bank, models and calibration (cached)."""
        source = self.sizes.second_corpus
        if source is None:
            return {}
        built = run_demo(self.cache / source, cfg=self.cfg, steps=1, prompts=[DEMO_PROMPTS["known"]], full=True,
                         source=source, on_stage=lambda name, status: log.info("bench %s bank: %s %s", source,
                                                                                 name, status))
        generator = Generator.from_bank(built.bank, self.cfg)
        try:
            r = measure(generator, self.cfg, max_pairs=self.sizes.quality_pairs, free_docs=self.sizes.free_docs)
        finally:
            generator.close()
        self.second_results = r
        return {
            f"dual_path_quality_{source}": Section(
                f"Quality: dual path on {source}", f"Teacher-forced on {r['generation']['pairs']:,} held-out pairs "
                f"of the {source} bank ({r['bank']['count']:,} concepts).",
                quality.DUAL_PATH_COLUMNS, quality.dual_path_rows(r)),
            **quality.case_sections(r, source, f"grounding_cases_{source}"),
            **quality.free_running_sections(r, source, f"free_running_quality_{source}"),
        }

    def scale(self) -> dict[str, Section]:
        """A million synthetic concepts built and trained on (full run), and encoding in 1 and 2 processes."""
        s = self.sizes
        out: dict[str, Section] = {}
        if s.encode_processes:
            texts = self.bank.texts(np.arange(min(len(self.bank), s.encode_processes)))
            rows = scale.bench_encoding_processes(self.bank.encoder(), texts)
            out["scale_encode"] = Section(
                "Scale: encoding in one process or two", f"`{self.bank.encoder_name}` on {len(texts):,} sentences of "
                "the bank: one process with torch's threads against the worker pool `bank build` uses (two "
                "processes, cores/2 threads each). Baseline: one process.", scale.ENCODE_COLUMNS, rows)
        if s.scale:
            rows, epochs = scale.bench_scale(self.workdir, s.scale, s.scale_epochs)
            out["scale"] = Section(
                f"Scale: {_size_name(s.scale)} concepts built and trained on", f"{s.scale:,} synthetic unit vectors "
                f"(d = {scale.DIM}) in documents of {scale.CONCEPTS_PER_DOCUMENT}, each around one of "
                f"{scale.TOPICS:,} topics. Build: `ConceptBank.from_vectors` from a memory-mapped file and a generator "
                "of concepts (encoding excluded: see the encoding rows). Training: the LVM (hidden 128, no rollout, "
                "batches of 1,024) through the epoch loop, the vectors memory-mapped; the query tower (hidden 128, "
                f"batches of 1,024, no queue) mining {scale.TOWER_MINE:,} sampled pairs per epoch and evaluating a "
                f"fixed sample of {scale.TOWER_EVAL:,} held-out pairs (a flat search at 1M costs ~0.15 s per query "
                "here; no heuristic rows). Pairs/s: per epoch, mining and evaluation included. Each in a fresh "
                "process; peak RSS is the whole process (Python, torch, FAISS). Baseline: the raw float32 vectors.",
                scale.SCALE_COLUMNS, rows)
            out["scale_epochs"] = Section(
                "Scale: training memory per epoch", "Resident memory of the training process after each epoch "
                "(train, mining, held-out evaluation). Baseline: epoch 1.", scale.EPOCH_COLUMNS, epochs)
        return out


def _ratios_per_group(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`x_baseline` of each row against the whole single step of its own index and K."""
    base = {(r["index"], r["k"]): r["median_ms"] for r in rows if r["name"] == "whole step (baseline)"}
    return [{**r, "x_baseline": r["median_ms"] / base[(r["index"], r["k"])]} for r in rows]


def _size_name(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1_000}k" if n % 1_000 == 0 else f"{n:,}"
