"""Free-running generation measured as a reader sees it, beside the baselines of the same run.

Teacher-forced numbers feed the true context at every step; a reader sees a stream that feeds back
its own steps. From the first `prompt_len` concepts of held-out documents, each lane and each
baseline generates `steps` concepts, rendered as text, and we measure per lane:

- repetition: the share of steps whose rendered concept was already shown (in the prompt or at an
  earlier step), and the share equal to the step just before;
- distinct: distinct rendered concepts per step of a stream;
- cos to the truth, by step t: cosine of step t to the document's own concept t, where the
  document has one (for the rendered concept, what the reader sees, and for the decided vector);
- drift: cosine of the rendered concept to the prompt's centroid, by step;
- grounded: the share of steps whose text is a real bank concept (SNAP), not an approximation;
- successive LVM cosine: cos(v̂_t, v̂_t-1), the sign of an LVM collapsing to a fixed point;
- three sample continuations.

Baselines, run through the same generator where they can be: `lvm-only` (never snaps),
`lvm-mean` (never snaps, and each step is the LVM's mean, not a draw of its sampler; only when the
generator has a sampler), `bank-only` (always snaps), `random-<lane>` (the lane's own decisions in
the lane's own shares, but drawn by chance instead of by c: does choosing by c beat chance?) and
`knn` (kNN continuation: the concept that follows the last concept's nearest bank neighbour in that
neighbour's own document, chained; the nonparametric baseline that kNN-LM and RETRO stand for).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from dualpath.bank import ConceptBank
from dualpath.config import SplitConfig
from dualpath.corpus.pairs import calibration_documents, heldout_documents, resolve_split
from dualpath.decider import (
    Decision,
    DualPathDecoder,
    Lane,
    extreme_lanes,
)
from dualpath.decider.grounding import successor_table
from dualpath.pipeline.generator import left_padded
from dualpath.pipeline.grounding import restated_vectors

if TYPE_CHECKING:
    from dualpath.pipeline.generator import Generator

log = logging.getLogger(__name__)

PROMPT_CONCEPTS = 2
STEPS = 8
SAMPLES = 3
KNN_DEPTH = 64  # neighbours a kNN step looks through for one whose successor is still unused


class Prompt(NamedTuple):
    """A held-out prompt: its name, its window of concept ids (prompt, then the truth), its whole document."""

    name: str
    window: np.ndarray
    document: np.ndarray


@dataclass
class Stream:
    """One free-running continuation of a held-out document's prompt."""

    doc_id: str
    prompt_ids: np.ndarray  # the document's first concepts, given as the prompt
    truth_ids: np.ndarray  # the document's own continuation (may be shorter than the stream)
    shown_ids: list[int] = field(default_factory=list)  # the concept each step was rendered as (-1: none)
    outputs: list[np.ndarray] = field(default_factory=list)  # the decided vector of each step
    lvm: list[np.ndarray] = field(default_factory=list)  # v̂ of each step (none for kNN)
    decisions: list[str] = field(default_factory=list)
    c_pick: list[float] = field(default_factory=list)  # the c each decision saw (finite only)
    grounded: list[bool] = field(default_factory=list)  # the text is the bank concept itself


def heldout_prompts(
    bank: ConceptBank,
    split: SplitConfig,
    docs: int,
    prompt_len: int = PROMPT_CONCEPTS,
    steps: int = STEPS,
    half: str | None = None,
    known: bool = False,
) -> list[Prompt]:
    """Prompts from up to `docs` held-out documents.

    The documents are the model's own held-out split (never trained on). A long document gives one
    prompt per `prompt_len + steps` concepts (its windows do not overlap), so a corpus of few long
    documents still gives many streams. Documents with the longest continuation come first, so late
    steps still have a truth to compare with; then by id, for a stable choice.
    """
    documents = bank.documents()
    split = resolve_split(split, documents)
    held = heldout_documents(tuple(documents), split.heldout_fraction, split.seed)
    if known:  # the documents the models trained on, instead
        held = set(documents) - held
    elif half is not None:
        fitted = calibration_documents(held, split.seed)
        held = fitted if half == "calibration" else held - fitted
    usable = [(d, documents[d]) for d in sorted(held) if len(documents[d]) > prompt_len]
    usable.sort(key=lambda item: -min(len(item[1]) - prompt_len, steps))
    prompts = []
    for doc_id, ids in usable[:docs]:
        for start in range(0, len(ids) - prompt_len, prompt_len + steps):
            name = doc_id if start == 0 else f"{doc_id}@{start}"
            prompts.append(Prompt(name, ids[start : start + prompt_len + steps], ids))
    return prompts


def restated_prompts(
    bank: ConceptBank, prompts: Sequence[Prompt], prompt_len: int = PROMPT_CONCEPTS
) -> list[np.ndarray]:
    """Each prompt said in other words (pipeline.grounding.restated_vectors), in one encoding call: what
    `generator_streams` and `knn_streams` take as `said_as`."""
    heads = [np.asarray(p.window[:prompt_len], np.int64) for p in prompts]
    vectors = restated_vectors(bank, np.concatenate(heads) if heads else np.zeros(0, np.int64))
    return list(np.split(vectors, np.cumsum([len(h) for h in heads])[:-1])) if heads else []


def generator_streams(
    generator: Generator,
    prompts: Sequence[Prompt],
    make_decoder: Callable[[int], DualPathDecoder],
    prompt_len: int = PROMPT_CONCEPTS,
    steps: int = STEPS,
    unseen: bool = False,
    lvm_temperature: float | None = None,
    said_as: Sequence[np.ndarray] | None = None,
) -> list[Stream]:
    """Run the generator from every prompt with a fresh decoder each (`make_decoder(stream index)`, so
    that seeded draws differ between streams), rendering every step.

    `unseen`: the prompt's whole document is kept out of the search, as if the prompt were text the
    bank has never seen (a user's own prompt); by default only the prompt's concepts are. `said_as`: each
    prompt's vectors as the user says them (`restated_prompts`: in other words, as a user types what a bank
    document says); such a prompt is not bank text, so nothing is excluded as its own.
    """
    bank = generator.bank
    streams = [Stream(p.name, p.window[:prompt_len], p.window[prompt_len : prompt_len + steps]) for p in prompts]
    runs = generator.generate_batch(
        list(said_as) if said_as is not None else [bank.vectors(s.prompt_ids) for s in streams],
        steps,
        context_ids=None if said_as is not None else [p.window[:prompt_len] for p in prompts],
        decoders=[make_decoder(i) for i in range(len(streams))],
        lvm_temperature=lvm_temperature,
        hidden_ids=[p.document for p in prompts] if unseen else None,
    )
    for stream, run in zip(streams, runs, strict=True):
        for step in run:
            stream.shown_ids.append(step.text_concept_id)
            stream.outputs.append(step.vector)
            if step.lvm_vector is not None:
                stream.lvm.append(step.lvm_vector)
            stream.decisions.append(step.record.decision.value)
            if step.record.c_pick is not None:
                stream.c_pick.append(step.record.c_pick)
            stream.grounded.append(not step.approximate and step.text_concept_id >= 0)
    return streams


def knn_streams(
    bank: ConceptBank,
    prompts: Sequence[Prompt],
    prompt_len: int = PROMPT_CONCEPTS,
    steps: int = STEPS,
    unseen: bool = False,
    said_as: Sequence[np.ndarray] | None = None,
) -> list[Stream]:
    """kNN continuation: follow the last shown concept's nearest neighbour to its successor, chained.

    The nearest neighbour may be the concept itself (a prompt from a bank document continues with the
    document); successors already shown (the prompt included) are skipped, the same no-repeat rule the
    lanes follow. `unseen`: the prompt's document is hidden from the search; `said_as`: the chain starts
    from each prompt's last vector as the user said it (`generator_streams`). One search per step.
    """
    successor = successor_table(bank.documents(), len(bank), 1)[0]
    streams = [Stream(p.name, p.window[:prompt_len], p.window[prompt_len : prompt_len + steps]) for p in prompts]
    used = [set(map(int, s.prompt_ids)) for s in streams]
    hidden = [set(map(int, p.document)) if unseen else set() for p in prompts]
    if said_as is not None:
        last = np.stack([np.asarray(v[-1], np.float32) for v in said_as]) if streams else np.zeros((0, bank.dim))
    else:
        last = bank.vectors([int(s.prompt_ids[-1]) for s in streams])
    for _ in range(steps):
        depth = min(len(bank), KNN_DEPTH + max(len(u) + len(h) for u, h in zip(used, hidden, strict=True)))
        found, _ = bank.search(last, depth)
        for i, stream in enumerate(streams):
            pick = -1
            for neighbour in found[i]:
                if neighbour < 0 or int(neighbour) in hidden[i]:
                    continue
                nxt = int(successor[neighbour])
                if nxt >= 0 and nxt not in used[i] and nxt not in hidden[i]:
                    pick = nxt
                    break
            stream.shown_ids.append(pick)
            stream.decisions.append(Decision.SNAP.value if pick >= 0 else Decision.NOVEL.value)
            stream.grounded.append(pick >= 0)
            if pick >= 0:
                used[i].add(pick)
                last[i] = bank.vectors([pick])[0]
            stream.outputs.append(last[i].copy())
    return streams


class RandomMixDecoder(DualPathDecoder):
    """The lane's decisions by chance: c is replaced by a draw from the lane's own c sample.

    n* is the best unused candidate, as in the lane; only *which* decision (and α) a step gets is
    decided by a random c' from `c_sample` (the c values the lane itself saw in the same run), so
    the SNAP / BLEND / NOVEL shares match the lane's while the choice ignores the step's real c.

    `lane` decides as the lane mixed and names the mix (`random_twin`); the decoders of one mix share it, so
    that a batch decides them in one call (decoders group by their lane object).
    """

    def __init__(self, lane: Lane, c_sample: np.ndarray, schedule: str, seed: int) -> None:
        super().__init__(lane, schedule=schedule, seed=seed)
        self.c_sample = np.asarray(c_sample, dtype=np.float64)

    def decision_c(self) -> float | None:
        return float(self._rng.choice(self.c_sample)) if self.c_sample.size else -1.0


def random_twin(lane: Lane) -> Lane:
    """The lane as its random mix: the same rule and levels, named random-<lane>."""
    return lane.model_copy(update={"name": f"random-{lane.name}"})


def successive_cosines(generator: Generator, prompts: Sequence[Prompt], prompt_len: int = PROMPT_CONCEPTS) -> dict:
    """How much consecutive vectors move, from the same prompts: the documents' own concepts, and the LVM's
    teacher-forced predictions (the true context at every step). Beside the free-running streams' LVM
    successive cosine, this says whether a settled LVM settles because it is fed its own outputs, or
    predicts a near-constant vector for a document whatever it is fed."""
    bank, lvm = generator.bank, generator.lvm
    truth: list[float] = []
    contexts: list[np.ndarray] = []
    owners: list[int] = []
    for n, p in enumerate(prompts):
        vectors = bank.vectors(p.window)
        truth += [float(vectors[t] @ vectors[t - 1]) for t in range(prompt_len + 1, len(vectors))]
        for t in range(prompt_len, len(vectors)):
            contexts.append(vectors[max(0, t - lvm.context) : t])
            owners.append(n)
    if not contexts:
        return {"truth": None, "teacher_forced_lvm": None}
    pred = lvm.predict(*left_padded(contexts, bank.dim))
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    same = np.asarray(owners[1:]) == np.asarray(owners[:-1])
    moved = (pred[1:] * pred[:-1]).sum(axis=1)[same]
    return {
        "truth": float(np.mean(truth)) if truth else None,
        "teacher_forced_lvm": float(moved.mean()) if moved.size else None,
    }


def near_repeats(prompt: np.ndarray, shown: np.ndarray, threshold: float) -> np.ndarray:
    """Per shown vector, whether it is at `threshold` cosine or closer to the prompt or an earlier one."""
    earlier = np.concatenate([prompt, shown]) @ shown.T  # (p + n, n)
    p = len(prompt)
    return np.array([earlier[: p + t, t].max(initial=-1.0) >= threshold for t in range(len(shown))], dtype=bool)


def stream_metrics(
    bank: ConceptBank, streams: Sequence[Stream], steps: int = STEPS, near_cosine: float = 1.0
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Every reader-side number of one lane's streams (see the module docstring), and per stream the
    mean cosine of its text, and of its decided vectors, to the document's own continuation (NaN where
    it has none), which the paired comparisons between lanes resample. A step whose text is at
    `near_cosine` or closer to the prompt or an earlier step is a near repeat (a paraphrase, or the same
    concept again)."""
    per_stream = np.full(len(streams), np.nan)
    per_stream_vector = np.full(len(streams), np.nan)
    repeat = consecutive = total = near = 0
    distinct: list[float] = []
    cos_shown = [[] for _ in range(steps)]
    cos_output = [[] for _ in range(steps)]
    drift = [[] for _ in range(steps)]
    successive = [[] for _ in range(steps)]
    decisions: list[str] = []
    grounded: list[bool] = []
    in_order: list[float] = []  # per stream: the share of the document's next concepts shown, in order, from step 0
    for index, s in enumerate(streams):
        prompt = bank.vectors(s.prompt_ids)
        centroid = prompt.mean(axis=0)
        centroid /= np.linalg.norm(centroid)
        seen = set(map(int, s.prompt_ids))
        previous = int(s.prompt_ids[-1])
        shown_vectors = bank.vectors([max(i, 0) for i in s.shown_ids])
        truth = bank.vectors(s.truth_ids) if len(s.truth_ids) else np.zeros((0, bank.dim), np.float32)
        valid = np.array([i >= 0 for i in s.shown_ids], dtype=bool)
        near += int(near_repeats(prompt, shown_vectors[valid], near_cosine).sum())
        for t, cid in enumerate(s.shown_ids):
            total += 1
            repeat += cid >= 0 and cid in seen
            consecutive += cid >= 0 and cid == previous
            if cid >= 0:
                seen.add(cid)
                drift[t].append(float(shown_vectors[t] @ centroid))
                if t < len(truth):
                    cos_shown[t].append(float(shown_vectors[t] @ truth[t]))
            if t < len(truth):
                cos_output[t].append(float(s.outputs[t] @ truth[t]))
            if t and len(s.lvm) > t:
                successive[t].append(float(s.lvm[t] @ s.lvm[t - 1]))
            previous = cid
        own = [float(shown_vectors[t] @ truth[t]) for t, cid in enumerate(s.shown_ids[: len(truth)]) if cid >= 0]
        if own:
            per_stream[index] = float(np.mean(own))
        if len(truth) and s.outputs:
            n = min(len(truth), len(s.outputs))
            per_stream_vector[index] = float(np.mean([s.outputs[t] @ truth[t] for t in range(n)]))
        shown = [i for i in s.shown_ids if i >= 0]
        distinct.append(len(set(shown)) / max(len(s.shown_ids), 1))
        if len(s.truth_ids):
            reach = min(steps, len(s.truth_ids))
            agree = [int(a) == int(b) for a, b in zip(s.shown_ids[:reach], s.truth_ids[:reach], strict=False)]
            prefix = agree.index(False) if False in agree else len(agree)
            in_order.append(prefix / reach)
        decisions.extend(s.decisions)
        grounded.extend(s.grounded)

    def by_step(values: list[list[float]]) -> list[float | None]:
        return [float(np.mean(v)) if v else None for v in values]

    def overall(values: list[list[float]]) -> float | None:
        flat = [x for v in values for x in v]
        return float(np.mean(flat)) if flat else None

    decided = np.asarray(decisions)
    metrics = {
        "streams": len(streams),
        "steps": total,
        "repeat_rate": repeat / max(total, 1),
        "consecutive_repeat_rate": consecutive / max(total, 1),
        "near_repeat_rate": near / max(total, 1),
        "distinct_per_stream": float(np.mean(distinct)) if distinct else 0.0,
        "cos_true": overall(cos_shown),
        "cos_true_by_step": by_step(cos_shown),
        "cos_true_output": overall(cos_output),
        "cos_true_output_by_step": by_step(cos_output),
        "drift_by_step": by_step(drift),
        "grounded_share": float(np.mean(grounded)) if grounded else 0.0,
        "in_order": float(np.mean(in_order)) if in_order else None,
        "successive_lvm_cos_by_step": by_step(successive)[1:],
        "shares": {d.value: float(np.mean(decided == d.value)) if len(decided) else 0.0 for d in Decision},
    }
    return metrics, per_stream, per_stream_vector


def decision_cosines(bank: ConceptBank, streams: Sequence[Stream], decision: str, steps: int = STEPS) -> np.ndarray:
    """(streams, steps): the cosine of the shown text to the document's own concept at each step that
    decided `decision`; NaN at other steps and where the document has no concept t."""
    out = np.full((len(streams), steps), np.nan)
    for i, s in enumerate(streams):
        picked = [t for t, (d, cid) in enumerate(zip(s.decisions, s.shown_ids, strict=True))
                  if d == decision and cid >= 0 and t < min(len(s.truth_ids), steps)]
        if picked:
            shown = bank.vectors([s.shown_ids[t] for t in picked])
            truth = bank.vectors(s.truth_ids[picked])
            out[i, picked] = (shown * truth).sum(axis=1)
    return out


def step_matched_difference(a: np.ndarray, b: np.ndarray, seed: int = 0, rounds: int = 2000) -> dict[str, float]:
    """How much `a`'s steps beat `b`'s at the same step number, weighted by `a`'s steps at each number.

    `a`, `b`: (streams, steps) with NaN where a stream has no such step (see `decision_cosines`). Step
    numbers are matched because early steps are closer to the truth for every lane, and a lane grounds
    more of them than chance does. The 95 % interval resamples streams, the same ones for both.
    """
    def difference(rows: np.ndarray) -> np.ndarray:  # rows (r, n) → (r,)
        sa, sb = a[rows], b[rows]
        na, nb = np.isfinite(sa).sum(axis=1), np.isfinite(sb).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.nansum(sa, axis=1) / na - np.nansum(sb, axis=1) / nb
        weight = np.where((na > 0) & (nb > 0), na, 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nansum(np.where(weight > 0, gap, 0.0) * weight, axis=1) / weight.sum(axis=1)

    n = len(a)
    whole = difference(np.arange(n)[None, :])[0] if n else float("nan")
    if not n or not np.isfinite(whole):
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "steps": 0}
    rng = np.random.default_rng(seed)
    resampled = difference(rng.integers(0, n, size=(rounds, n)))
    lo, hi = np.nanquantile(resampled, [0.025, 0.975])
    return {"diff": float(whole), "lo": float(lo), "hi": float(hi), "steps": int(np.isfinite(a).sum())}


def paired_difference(a: np.ndarray, b: np.ndarray, seed: int = 0, rounds: int = 2000) -> dict[str, float]:
    """Mean of a - b over the streams both have, with a 95 % bootstrap interval (streams resampled in pairs)."""
    keep = np.isfinite(a) & np.isfinite(b)
    diff = (a - b)[keep]
    if diff.size == 0:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "streams": 0}
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(rounds, diff.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"diff": float(diff.mean()), "lo": float(lo), "hi": float(hi), "streams": int(diff.size)}


def samples(bank: ConceptBank, streams: Sequence[Stream], n: int = SAMPLES) -> list[dict[str, Any]]:
    """The first `n` streams as text: prompt, continuation (decision per step), the document's truth."""
    out = []
    for s in streams[:n]:
        texts = bank.texts([i for i in s.shown_ids if i >= 0])
        shown = iter(texts)
        out.append({
            "doc_id": s.doc_id,
            "prompt": bank.texts(s.prompt_ids),
            "steps": [
                {"decision": d, "text": next(shown) if i >= 0 else ""}
                for d, i in zip(s.decisions, s.shown_ids, strict=True)
            ],
            "truth": bank.texts(s.truth_ids[:3]),
        })
    return out


def evaluate_free_running(
    generator: Generator,
    lanes: dict[str, Lane],
    docs: int = 200,
    prompt_len: int = PROMPT_CONCEPTS,
    steps: int = STEPS,
    split: SplitConfig | None = None,
    near_cosine: float | None = None,
    case: str = "added",
) -> dict[str, Any]:
    """Every lane and every baseline from the same prompts of one case: metrics and samples per name.

    `case` (pipeline/grounding.py): "added" (the evaluation half of the held-out documents, in the bank),
    "known" (documents the models trained on), "restated" (as added, the prompt said in other words) or
    "unknown" (held-out documents hidden from every search).

    A near repeat is a step at `near_cosine` (default: the generator's paraphrase cosine) or closer
    to its prompt or an earlier step; the documents' own rate (`truth_near_repeat_rate`) is beside it.

    `lanes` are the lanes to measure (calibrated ones, as the generator holds them); the baselines
    `lvm-only`, `bank-only`, `random-<lane>` for each lane, and `knn` are added here, and `lvm-mean`
    (LVM-only with every step the LVM's mean) when the generator draws with a sampler.
    """
    bank = generator.bank
    split = split or generator.lvm.training_split(generator.cfg.split)
    if case not in ("known", "added", "restated", "unknown"):
        raise ValueError(f"case must be known, added, restated or unknown, got {case!r}")
    prompts = heldout_prompts(bank, split, docs, prompt_len, steps, half="evaluation", known=case == "known")
    unseen = case == "unknown"
    said_as = restated_prompts(bank, prompts, prompt_len) if case == "restated" else None
    near_cosine = generator.cfg.generation.paraphrase_cosine if near_cosine is None else near_cosine
    if not prompts:
        return {}
    schedule = generator.cfg.decider.schedule
    seed = generator.cfg.generation.seed
    k = max(lane.k for lane in lanes.values())
    results: dict[str, Any] = {}
    per_stream: dict[str, np.ndarray] = {}
    per_stream_vector: dict[str, np.ndarray] = {}
    grounded_cos: dict[str, np.ndarray] = {}

    def record(name: str, streams: list[Stream]) -> None:
        metrics, per_stream[name], per_stream_vector[name] = stream_metrics(bank, streams, steps, near_cosine)
        grounded_cos[name] = decision_cosines(bank, streams, Decision.SNAP.value, steps)
        grounded = grounded_cos[name][np.isfinite(grounded_cos[name])]
        metrics["grounded_cos_true"] = float(grounded.mean()) if grounded.size else None
        results[name] = {**metrics, "samples": samples(bank, streams)}
        m = results[name]
        log.info(
            "free-running %s: repeat %.1f %%, distinct %.2f, cos to truth %.4f, grounded %.1f %%",
            name, 100 * m["repeat_rate"], m["distinct_per_stream"], m["cos_true"] or float("nan"),
            100 * m["grounded_share"],
        )

    shown: dict[str, np.ndarray] = {}
    for name, lane in {**lanes, **extreme_lanes(k)}.items():
        streams = generator_streams(
            generator, prompts, lambda i, lane=lane: generator.decoder(lane, seed=seed + i), prompt_len, steps,
            unseen, said_as=said_as,
        )
        record(name, streams)
        shown[name] = np.array([s.shown_ids for s in streams])
        if name in lanes:
            c_sample = np.asarray([c for s in streams for c in s.c_pick])
            twin = random_twin(lane)
            random = generator_streams(
                generator, prompts,
                lambda i, twin=twin, c_sample=c_sample: RandomMixDecoder(twin, c_sample, schedule, seed + i),
                prompt_len, steps, unseen, said_as=said_as,
            )
            record(f"random-{name}", random)
    if generator.lvm_temperature > 0:
        # What the sampler changes: LVM-only again, each step the LVM's mean instead of a draw.
        lvm_only = extreme_lanes(k)["lvm-only"]
        record("lvm-mean", generator_streams(
            generator, prompts, lambda i: generator.decoder(lvm_only, seed=seed + i), prompt_len, steps, unseen,
            lvm_temperature=0.0, said_as=said_as,
        ))
    record("knn", knn_streams(bank, prompts, prompt_len, steps, unseen, said_as))
    # Each lane against its baselines on the same prompts: is the gap in text cosine more than noise?
    for name in lanes:
        # Does the lane change what the reader sees? The share of steps showing what LVM-only shows.
        results[name]["same_text_as_lvm_only"] = float(np.mean(shown[name] == shown["lvm-only"]))
        results[name]["versus"] = {
            baseline: paired_difference(per_stream[name], per_stream[key], seed)
            for baseline, key in (("random", f"random-{name}"), ("lvm-only", "lvm-only"), ("knn", "knn"))
        }
        # Where the decision acts directly: the decided vector (the text is the nearest concept either way),
        # and which steps get an exact bank sentence (the same share of steps, chosen by c or by chance).
        results[name]["versus"]["random (vector)"] = paired_difference(
            per_stream_vector[name], per_stream_vector[f"random-{name}"], seed
        )
        results[name]["versus"]["random (grounded steps)"] = step_matched_difference(
            grounded_cos[name], grounded_cos[f"random-{name}"], seed
        )
    documents = len({p.name.split("@")[0] for p in prompts})
    truth = [near_repeats(bank.vectors(p.window[:prompt_len]), bank.vectors(p.window[prompt_len:]), near_cosine)
             for p in prompts if len(p.window) > prompt_len]
    truth_rate = float(np.concatenate(truth).mean()) if truth else None
    return {"case": case, "docs": documents, "prompts": len(prompts), "prompt_concepts": prompt_len, "steps": steps,
            "near_cosine": near_cosine, "truth_near_repeat_rate": truth_rate,
            "successive_cos": successive_cosines(generator, prompts, prompt_len), "lanes": results}


PERCENT_KEYS = {
    "repeat_rate", "consecutive_repeat_rate", "near_repeat_rate", "same_text_as_lvm_only", "grounded_share",
    "snap", "blend", "novel", "in_order",
}
FREE_RUNNING_COLUMNS = {
    "name": "lane", "repeat_rate": "repeat", "consecutive_repeat_rate": "repeat at t-1",
    "near_repeat_rate": "near repeat", "same_text_as_lvm_only": "same text as LVM-only",
    "distinct_per_stream": "distinct", "cos_true": "cos to truth (text)", "cos_true_output": "cos to truth (vector)",
    "grounded_share": "grounded", "grounded_cos_true": "grounded: cos to truth",
    "in_order": "document's own next concepts, in order",
    "snap": "SNAP", "blend": "BLEND", "novel": "NOVEL",
    "successive_lvm_cos": "LVM successive cos", "x_random": "text cos × random mix",
    "vs_random": "− random mix (95 % CI)", "vs_random_vector": "− random mix, vector (95 % CI)",
    "vs_random_grounded": "− random mix, grounded steps (95 % CI)", "vs_lvm_only": "− LVM-only (95 % CI)",
}


def free_running_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per lane and baseline of `evaluate_free_running`'s result (for tables and the bench)."""
    lanes: dict[str, dict[str, Any]] = result.get("lanes", {})
    rows = []
    for name, m in lanes.items():
        random = lanes.get(f"random-{name}", {}).get("cos_true")
        successive = [x for x in m["successive_lvm_cos_by_step"] if x is not None]
        rows.append({
            "name": name,
            **{key: m[key] for key in ("repeat_rate", "consecutive_repeat_rate", "near_repeat_rate",
                                       "distinct_per_stream", "cos_true",
                                       "cos_true_output", "grounded_share")},
            "grounded_cos_true": m.get("grounded_cos_true"),
            "in_order": m.get("in_order"),
            "same_text_as_lvm_only": m.get("same_text_as_lvm_only"),
            "snap": m["shares"]["SNAP"], "blend": m["shares"]["BLEND"], "novel": m["shares"]["NOVEL"],
            "successive_lvm_cos": float(np.mean(successive)) if successive else None,
            "x_random": m["cos_true"] / random if random and m["cos_true"] is not None else None,
            "vs_random": interval(m.get("versus", {}).get("random")),
            "vs_random_vector": interval(m.get("versus", {}).get("random (vector)")),
            "vs_random_grounded": interval(m.get("versus", {}).get("random (grounded steps)")),
            "vs_lvm_only": interval(m.get("versus", {}).get("lvm-only")),
        })
    return rows


def free_running_note(result: dict[str, Any], successive_column: bool = True) -> str:
    """What a near repeat is in `result` (with the documents' own rate), and how far consecutive vectors move
    (`successive_column`: the table beside the note has the streams' own, and the note points to it)."""
    truth = result.get("truth_near_repeat_rate")
    own = f"; the documents' own continuations do so at {truth:.1%} of their sentences" if truth is not None else ""
    moved = result.get("successive_cos") or {}
    successive = (
        f" Successive cosine of the documents' own concepts {moved['truth']:.3f}, of the LVM's teacher-forced "
        f"predictions {moved['teacher_forced_lvm']:.3f}"
        + (" (free-running: the `LVM successive cos` column)." if successive_column else ".")
        if moved.get("truth") is not None and moved.get("teacher_forced_lvm") is not None else ""
    )
    return (
        f"`near repeat`: the text is at cosine {result.get('near_cosine', 1.0):.3f} or closer (the bank's paraphrase "
        f"cosine) to the prompt or an earlier step{own}.{successive}"
    )


def interval(d: dict[str, float] | None) -> str | None:
    """A paired difference as "+0.0123 [+0.0050, +0.0190]" (None where there is none)."""
    if not d or not np.isfinite(d["diff"]):
        return None
    return f"{d['diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
