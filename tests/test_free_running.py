"""Free-running generation as a reader sees it: no repeated concepts, batched = single, seeded sampling,
the free-running evaluation with its baselines, calibration on free-running streams, rollout training."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualpath.corpus.pairs import make_pairs
from dualpath.decider import Decision, Sampling, make_lane
from dualpath.decider.decision import _sample
from dualpath.pipeline.calibrate import PARAPHRASE_CEILING, PARAPHRASE_SHARE, calibrate_bank, paraphrase_cosine
from dualpath.pipeline.free_running import (
    PROMPT_CONCEPTS,
    RandomMixDecoder,
    decision_cosines,
    evaluate_free_running,
    free_running_rows,
    generator_streams,
    heldout_prompts,
    knn_streams,
    near_repeats,
    step_matched_difference,
    successive_cosines,
)
from dualpath.pipeline.generator import Generator
from dualpath.training.lvm import successors
from trained_models import tiny_config

PROMPT = "The Moon is Earth's only natural satellite. It orbits the planet at an average distance of 384,400 km."
LANES = ("conservative", "neutral", "creative", "legal")


@pytest.fixture(scope="module")
def generator(trained_bank_path):
    gen = Generator.from_bank(trained_bank_path, tiny_config())
    yield gen
    gen.close()


def grounding_lane(generator: Generator):
    """Conservative with thresholds where the tiny LVM's draws reach this uncalibrated bank (c 0.35-0.55)."""
    return generator.lane("conservative").model_copy(update={"tau_snap": 0.45, "tau_novel": 0.35})


def _doc_prompts(generator: Generator, n: int) -> list[np.ndarray]:
    documents = [ids for ids in generator.bank.documents().values() if len(ids) >= 3]
    return documents[:n]


@pytest.mark.parametrize("lane", LANES)
def test_an_eight_step_stream_never_shows_a_concept_twice(generator, lane):
    steps = list(generator.generate(PROMPT, steps=8, lane=lane))
    shown = [s.text_concept_id for s in steps]
    assert all(i >= 0 for i in shown)
    assert len(set(shown)) == len(shown), [s.text for s in steps]
    assert len({s.text for s in steps}) == len(steps)


def test_streams_from_bank_prompts_repeat_neither_prompt_nor_step(generator):
    for ids in _doc_prompts(generator, 6):
        prompt_ids = ids[:2]
        run = list(generator.generate(generator.bank.vectors(prompt_ids), 8, "neutral", context_ids=prompt_ids))
        shown = [s.text_concept_id for s in run]
        assert len(set(shown)) == len(shown)
        assert not set(shown) & set(prompt_ids.tolist())


def test_batched_generation_gives_each_stream_its_single_steps(generator):
    documents = _doc_prompts(generator, 5)
    prompts = [generator.bank.vectors(ids[:2]) for ids in documents]
    context_ids = [ids[:2] for ids in documents]
    sampling = Sampling(0.05, top_k=5)
    batch = generator.generate_batch(prompts, 6, "neutral", context_ids, sampling=sampling, seed=3)
    for i, (prompt, ids) in enumerate(zip(prompts, context_ids, strict=True)):
        single = list(generator.generate(prompt, 6, "neutral", context_ids=ids, sampling=sampling, seed=3 + i))
        assert [s.record.decision for s in single] == [s.record.decision for s in batch[i]]
        assert [s.text_concept_id for s in single] == [s.text_concept_id for s in batch[i]]
        for a, b in zip(single, batch[i], strict=True):
            np.testing.assert_allclose(a.vector, b.vector, atol=1e-5)


def test_a_seed_repeats_a_sampled_run_exactly(generator):
    hot = Sampling(1.0)
    # Sampling picks n*, which the text shows at a SNAP: a lane that always snaps makes every draw visible.
    always = make_lane("always", {"tau_snap": -1 + 1e-9, "tau_novel": -1.0})

    def run(seed: int) -> list[int]:
        return [s.text_concept_id for s in generator.generate(PROMPT, 8, always, sampling=hot, seed=seed)]

    assert run(11) == run(11)
    assert any(run(11) != run(seed) for seed in (12, 13, 14))


def test_free_running_evaluation_measures_every_lane_and_baseline(generator):
    lanes = {"conservative": grounding_lane(generator), "creative": generator.lane("creative")}
    result = evaluate_free_running(generator, lanes, docs=12, steps=4)
    names = set(result["lanes"])
    assert names == {"conservative", "creative", "random-conservative", "random-creative", "lvm-only", "bank-only",
                     "knn", "lvm-mean"}  # lvm-mean: the trained LVM has a sampler, drawing at temperature 1
    for name, m in result["lanes"].items():
        assert m["steps"] == result["prompts"] * 4
        assert 0.0 <= m["repeat_rate"] <= 0.05, name  # the no-repeat rule holds in every lane and baseline
        assert 0.95 <= m["distinct_per_stream"] <= 1.0
        assert -1.0 <= m["cos_true"] <= 1.0 + 1e-5  # a shown concept that is the truth: 1 up to float32
        assert m["in_order"] is None or 0.0 <= m["in_order"] <= 1.0
        assert len(m["drift_by_step"]) == 4
        assert len(m["samples"]) == 3 and all(len(s["steps"]) == 4 for s in m["samples"])
    assert result["lanes"]["knn"]["grounded_share"] == 1.0
    assert result["lanes"]["bank-only"]["shares"]["SNAP"] == 1.0
    assert result["lanes"]["lvm-only"]["grounded_share"] == 0.0
    # The sampler's draws (at the default temperature 0.25) move from step to step; the LVM's mean
    # (lvm-mean) settles. Tiny models: 0.95 against 0.996.
    drawn, mean = (np.nanmean(np.asarray(result["lanes"][n]["successive_lvm_cos_by_step"], dtype=float))
                   for n in ("lvm-only", "lvm-mean"))
    assert drawn < mean - 0.02
    # The random mix decides by chance at the lane's own shares: close to the lane's, not equal by construction.
    lane, random = result["lanes"]["conservative"]["shares"], result["lanes"]["random-conservative"]["shares"]
    assert abs(lane["NOVEL"] - random["NOVEL"]) < 0.35
    versus = result["lanes"]["conservative"]["versus"]
    assert set(versus) == {"random", "random (vector)", "random (grounded steps)", "lvm-only", "knn"}
    assert all(v["lo"] <= v["diff"] <= v["hi"] for v in versus.values() if np.isfinite(v["diff"]))
    # Conservative grounds, and so at some step shows something LVM-only does not.
    assert 0.0 <= result["lanes"]["conservative"]["same_text_as_lvm_only"] < 1.0
    # Consecutive vectors, by hand for the first prompt: the document's own, and the LVM fed the true context.
    prompts = heldout_prompts(generator.bank, generator.lvm.training_split(generator.cfg.split), 1, steps=4)
    window = generator.bank.vectors(prompts[0].window)
    one = successive_cosines(generator, prompts[:1])
    assert one["truth"] == pytest.approx(np.mean([window[t] @ window[t - 1] for t in range(3, len(window))]), abs=1e-5)
    context = generator.lvm.context
    preds = [generator.lvm.predict(window[None, max(0, t - context) : t])[0] for t in range(2, len(window))]
    preds = [v / np.linalg.norm(v) for v in preds]
    moved = [a @ b for a, b in zip(preds[1:], preds[:-1], strict=True)]
    assert one["teacher_forced_lvm"] == pytest.approx(np.mean(moved), abs=1e-4)
    rows = {row["name"]: row for row in free_running_rows(result)}
    assert rows["conservative"]["x_random"] == pytest.approx(
        result["lanes"]["conservative"]["cos_true"] / result["lanes"]["random-conservative"]["cos_true"]
    )


def test_knn_continuation_follows_a_neighbour_to_its_successor(generator):
    bank = generator.bank
    successor = {}
    for ids in bank.documents().values():
        successor.update(zip(ids[:-1].tolist(), ids[1:].tolist(), strict=True))
    prompts = heldout_prompts(bank, generator.lvm.training_split(generator.cfg.split), 10, steps=3)
    for stream in knn_streams(bank, prompts, steps=3):
        shown = [i for i in stream.shown_ids if i >= 0]
        assert shown, "kNN continuation found nothing"
        assert all(i in successor.values() for i in shown)  # every step is some concept's successor
        assert not set(shown) & set(stream.prompt_ids.tolist())
        assert len(set(shown)) == len(shown)


def test_long_documents_give_one_prompt_per_window(generator):
    split = generator.lvm.training_split(generator.cfg.split)
    prompts = heldout_prompts(generator.bank, split, 1000, prompt_len=1, steps=1)
    documents = {p.name.split("@")[0] for p in prompts}
    assert len(prompts) > len(documents)  # a document of 4+ concepts gives a second window
    for p in prompts:
        assert 2 <= len(p.window) <= 2 and np.isin(p.window, p.document).all()


def test_calibration_on_free_running_streams_orders_the_lanes(generator, trained_bank_path, tmp_path):
    bank_path = tmp_path / "bank"
    shutil.copytree(trained_bank_path, bank_path)
    gen = Generator.from_bank(bank_path, tiny_config())
    try:
        result = calibrate_bank(gen.bank, gen.lvm, gen.tower, gen.cfg, generator=gen, free_docs=60)
        assert result["basis"] == "free-running" and result["free_running_steps"] >= 100
        lanes = result["lanes"]
        assert lanes["conservative"]["tau_snap"] <= lanes["neutral"]["tau_snap"] <= lanes["creative"]["tau_snap"]
        assert "free-running" in lanes["quota-neutral"]["provenance"]  # the quota rule is set on free-running c
        gen.apply_calibration()
        grounded = {}
        for name in ("conservative", "creative"):
            free = evaluate_free_running(gen, {name: gen.lane(name)}, docs=30, steps=4)
            grounded[name] = free["lanes"][name]["grounded_share"]
        assert grounded["conservative"] >= grounded["creative"]
    finally:
        gen.close()


def test_successors_follow_each_document():
    pairs = make_pairs([np.array([5, 6, 7]), np.array([1, 2]), np.array([9])], context=2)
    nxt = successors(pairs, 10)
    assert nxt[6] == 7 and nxt[1] == -1 and nxt[2] == -1 and nxt[7] == -1 and nxt[9] == -1


def test_rollout_training_trains_and_changes_the_model(wiki_bank, tmp_path):
    from dualpath.models.lvm import LatentVectorModel
    from dualpath.training.lvm import train_lvm

    base = tiny_config()
    outputs = {}
    for steps in (0, 2):
        cfg = base.model_copy(update={"lvm": base.lvm.model_copy(update={"epochs": 1, "rollout_steps": steps})})
        train_lvm(wiki_bank, cfg, tmp_path / f"lvm{steps}")
        model = LatentVectorModel.load(tmp_path / f"lvm{steps}")
        context = wiki_bank.vectors(np.arange(3))
        outputs[steps] = model.rollout(context, 3)
    assert outputs[0].shape == outputs[2].shape == (3, wiki_bank.dim)
    assert not np.allclose(outputs[0], outputs[2])


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(1, 20),
    top_k=st.integers(0, 6),
    top_p=st.floats(0.05, 1.0),
    temperature=st.floats(0.001, 5.0),
)
def test_a_sampled_candidate_is_valid_and_within_top_k(seed, k, top_k, top_p, temperature):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-1, 1, size=(3, k)).astype(np.float32)
    cos[rng.random((3, k)) < 0.3] = -np.inf
    cos[:, 0] = np.maximum(cos[:, 0], -0.5)  # at least one valid candidate per stream
    draws = rng.random(3)
    picks = _sample(cos, Sampling(temperature, top_k, top_p), draws)
    for row, pick in enumerate(picks):
        assert np.isfinite(cos[row, pick])
        better = int((cos[row] > cos[row, pick]).sum())
        if top_k:
            assert better < top_k
    # A draw of 0 always takes the best candidate.
    best = _sample(cos, Sampling(temperature, top_k, top_p), np.zeros(3))
    assert np.array_equal(cos[np.arange(3), best], cos.max(axis=1))


def test_decisions_still_follow_c_under_the_no_repeat_rule(generator):
    prompts = [ids[:PROMPT_CONCEPTS] for ids in _doc_prompts(generator, 8)]

    def run(lane) -> list:
        return [s for ids in prompts for s in generator.generate(generator.bank.vectors(ids), 6, lane, context_ids=ids)]

    # Thresholds inside the c this bank's streams actually see, so SNAP and NOVEL both occur.
    seen = np.array([s.record.c_pick for s in run("quota-neutral") if s.record.c_pick is not None])
    lane = make_lane("split", {"tau_snap": float(np.quantile(seen, 0.65)), "tau_novel": float(np.quantile(seen, 0.35))})
    steps = run(lane)
    snaps = [s.record.c_pick for s in steps if s.record.decision is Decision.SNAP]
    novels = [s.record.c_pick for s in steps if s.record.decision is Decision.NOVEL and s.record.c_pick is not None]
    assert snaps and novels
    assert min(snaps) >= lane.tau_snap > lane.tau_novel >= max(novels)


def test_a_batch_mixes_prompt_lengths_and_lanes(generator):
    prompts = [PROMPT, "Photosynthesis turns light into chemical energy.", generator.bank.vectors([0, 1, 2])]
    lanes = ["conservative", "creative", "neutral"]
    decoders = [generator.decoder(lane, seed=i) for i, lane in enumerate(lanes)]
    batch = generator.generate_batch(prompts, 5, decoders=decoders)
    for i, (prompt, lane) in enumerate(zip(prompts, lanes, strict=True)):
        single = list(generator.generate(prompt, 5, lane, seed=i))
        assert [s.record.lane for s in batch[i]] == [lane] * 5
        assert [s.text_concept_id for s in single] == [s.text_concept_id for s in batch[i]]
        assert [s.record.decision for s in single] == [s.record.decision for s in batch[i]]


def test_paraphrase_cosine_follows_how_often_documents_restate_themselves():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fresh = {f"d{i}": np.arange(i * 10, i * 10 + 10) for i in range(100)}
    theta = paraphrase_cosine(fresh, vectors, default=0.8)
    best = np.concatenate([
        [max(float(vectors[ids[t]] @ vectors[ids[u]]) for u in range(t)) for t in range(1, len(ids))]
        for ids in fresh.values()
    ])
    assert 0 < theta < 0.95 and abs(np.mean(best >= theta) - PARAPHRASE_SHARE) < 0.01
    # Documents that say every sentence twice (same text, two ids): the ceiling, so those still count.
    twice = vectors.copy()
    twice[1::2] = twice[0::2]
    assert paraphrase_cosine(fresh, twice, default=0.8) == PARAPHRASE_CEILING
    assert paraphrase_cosine({"d0": np.arange(5)}, vectors, default=0.8) == 0.8  # too few to measure


def test_a_stream_does_not_restate_its_prompt_or_itself_in_other_words(trained_bank_path):
    """A concept with a close paraphrase in the bank as the prompt: without the guard the stream shows a
    paraphrase of it or of an earlier step; with the guard none of its steps is that close."""
    bank_gen = Generator.from_bank(trained_bank_path, tiny_config())
    vectors = bank_gen.bank.all_vectors()
    theta = 0.7
    sims = np.asarray(vectors[:400], np.float32) @ np.asarray(vectors, np.float32).T
    sims[np.arange(400), np.arange(400)] = -1
    prompts = [int(i) for i in np.argsort(-sims.max(axis=1))[:6]]
    assert sims[prompts].max(axis=1).min() >= theta  # each prompt has a paraphrase in the bank
    bank_gen.close()

    def near_repeat_steps(value: float) -> int:
        cfg = tiny_config()
        cfg = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"paraphrase_cosine": value})})
        gen = Generator.from_bank(trained_bank_path, cfg)
        try:
            runs = gen.generate_batch([gen.bank.vectors([p]) for p in prompts], 6, "neutral",
                                      context_ids=[[p] for p in prompts])
            shown = [gen.bank.vectors([s.text_concept_id for s in run]) for run in runs]
            return sum(
                int(near_repeats(gen.bank.vectors([p]), steps, theta).sum())
                for p, steps in zip(prompts, shown, strict=True)
            )
        finally:
            gen.close()

    assert near_repeat_steps(1.0) > 0
    assert near_repeat_steps(theta) == 0


def test_a_baseline_decoder_decides_its_own_way_inside_a_batch(generator):
    """generate_batch groups alike decoders into one decision call; a decoder with its own `step` (the
    random mix) must still decide by it. A c sample of -1 makes the random mix NOVEL at every step."""
    lane = grounding_lane(generator)
    prompts = heldout_prompts(generator.bank, generator.lvm.training_split(generator.cfg.split), 6, steps=4)
    schedule = generator.cfg.decider.schedule
    lane_streams = generator_streams(generator, prompts, lambda i: generator.decoder(lane, seed=i), steps=4)
    never = generator_streams(
        generator, prompts, lambda i: RandomMixDecoder(lane, np.array([-1.0]), schedule, i), steps=4
    )
    assert any(d != "NOVEL" for s in lane_streams for d in s.decisions)
    assert all(d == "NOVEL" for s in never for d in s.decisions)
    # Mixed in one batch with the lane's own decoders, each stream still decides its own way.
    both = generator_streams(
        generator, prompts + prompts,
        lambda i: generator.decoder(lane, seed=i) if i < len(prompts) else RandomMixDecoder(
            lane, np.array([-1.0]), schedule, i - len(prompts)
        ),
        steps=4,
    )
    assert [s.decisions for s in both] == [s.decisions for s in lane_streams + never]


def test_a_random_mix_decides_its_streams_together_and_as_each_alone(generator, monkeypatch):
    """The evaluation's random mixes: every decoder of one mix holds the one twin lane, so a batch decides
    them in one call per step, each stream with its own c draw, as a call per stream decides it."""
    import dualpath.decider.decoder as decoder_module
    import dualpath.pipeline.free_running as free_running

    lane = grounding_lane(generator)
    prompts = heldout_prompts(generator.bank, generator.lvm.training_split(generator.cfg.split), 6, steps=4)
    schedule = generator.cfg.decider.schedule
    c_sample = np.linspace(0.0, 1.0, 11)
    calls = []
    original = decoder_module.choose_grounded
    monkeypatch.setattr(decoder_module, "choose_grounded", lambda *a, **k: calls.append(1) or original(*a, **k))
    # A twin per decoder: each its own group, one call per stream and step.
    apart = generator_streams(generator, prompts, lambda i: RandomMixDecoder(
        free_running.random_twin(lane), c_sample, schedule, i), steps=4)
    assert len(calls) == 6 * 4
    calls.clear()
    twin = free_running.random_twin(lane)
    together = generator_streams(generator, prompts, lambda i: RandomMixDecoder(twin, c_sample, schedule, i), steps=4)
    assert len(calls) == 4, "one decision call per step for the whole mix"
    assert [s.decisions for s in together] == [s.decisions for s in apart]
    assert len({d for s in together for d in s.decisions}) > 1, "the draws decide differently"
    for a, b in zip(together, apart, strict=True):
        np.testing.assert_array_equal(np.array(a.outputs), np.array(b.outputs))

    # evaluate_free_running builds each mix's decoders on one twin of its lane.
    twins: dict[str, set[int]] = {}
    made = free_running.RandomMixDecoder.__init__

    def spy(self, mixed, *args):
        twins.setdefault(mixed.name, set()).add(id(mixed))
        made(self, mixed, *args)

    monkeypatch.setattr(free_running.RandomMixDecoder, "__init__", spy)
    evaluate_free_running(generator, {"conservative": lane}, docs=4, steps=3)
    assert list(twins) == ["random-conservative"] and len(twins["random-conservative"]) == 1


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**31 - 1),
    st.floats(min_value=-0.5, max_value=0.5, allow_nan=False),
)
def test_step_matched_difference_finds_a_shift_whatever_the_steps(seed, shift):
    """b is a with every value moved by -shift, and with its steps at other positions of the same step
    numbers: the step-matched difference is the shift, and its interval holds it."""
    rng = np.random.default_rng(seed)
    a = np.where(rng.random((30, 8)) < 0.4, rng.normal(0.5 - 0.03 * np.arange(8), 0.01, (30, 8)), np.nan)
    a[0] = 0.5  # every step number has a value
    b = a[rng.permutation(30)] - shift
    result = step_matched_difference(a, b, seed=seed, rounds=200)
    # Within one step number, a and b hold the same values (permuted by stream) moved by the shift.
    assert result["diff"] == pytest.approx(shift, abs=1e-9)
    assert result["steps"] == int(np.isfinite(a).sum())
    # Unmatched, early-heavy a against late-heavy b would look better than it is; matched, it does not.
    late = np.full_like(a, np.nan)
    late[:, 4:] = 0.4
    early = np.full_like(a, np.nan)
    early[:, :4] = 0.6
    early[:, 4:] = 0.4
    assert step_matched_difference(early, late, rounds=50)["diff"] == pytest.approx(0.0)


def test_decision_cosines_are_the_shown_text_against_the_truth_at_those_steps(generator):
    prompts = heldout_prompts(generator.bank, generator.lvm.training_split(generator.cfg.split), 4, steps=4)
    streams = generator_streams(generator, prompts, lambda i: generator.decoder("conservative", seed=i), steps=4)
    snap = decision_cosines(generator.bank, streams, "SNAP", steps=4)
    for s, row in zip(streams, snap, strict=True):
        for t in range(4):
            if s.decisions[t] == "SNAP" and t < len(s.truth_ids):
                shown, truth = generator.bank.vectors([s.shown_ids[t], s.truth_ids[t]])
                assert row[t] == pytest.approx(float(shown @ truth), abs=1e-5)
            else:
                assert np.isnan(row[t])
