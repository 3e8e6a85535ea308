"""Micro-batched POST /generate through a real server: concurrent requests are computed together, and each
gets the answer it gets alone (its lane, steps, sampling and seed), or its own error."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dualpath.errors import DualPathError
from dualpath.service import DualPathService, GenerateRequest, InputError
from live_server import serving
from test_service import PROMPT, service_bank, service_config  # noqa: F401 (service_bank: a fixture)

OTHER = "Mount Everest is the highest mountain on Earth. It lies in the Himalayas."
# Lanes, step counts, sampling and seeds all differ; two requests are the same; one breaks the steps limit.
REQUESTS = [
    {"prompt": PROMPT, "steps": 6, "lane": "conservative"},
    {"prompt": PROMPT, "steps": 3, "lane": "creative"},
    {"prompt": OTHER, "steps": 6, "lane": "neutral", "temperature": 0.7, "seed": 5},
    {"prompt": OTHER, "steps": 6, "lane": "neutral", "temperature": 0.7, "seed": 6},
    {"prompt": PROMPT, "steps": 4, "lane": "legal", "with_vectors": True},
    {"prompt": OTHER, "steps": 3},
    {"prompt": OTHER, "steps": 3},
    {"prompt": OTHER, "steps": 3, "lvm_temperature": 0.0},  # the LVM's mean: batched apart from the draws
    {"prompt": PROMPT, "steps": 10_000},
]


def assert_same(a, b, where: str = "answer") -> None:
    """Equal answers, timings aside; floats to 1e-5 (batched matrix products round differently), the rest exactly."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, abs_tol=1e-5) or (math.isnan(a) and math.isnan(b)), (where, a, b)
    elif isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) - {"stage_latency_ms", "latency_ms"}
        assert keys == set(b) - {"stage_latency_ms", "latency_ms"}, where
        for key in keys:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def batch_sizes(base: str) -> tuple[float, float]:
    """(requests, batches) from the server's batch-size histogram."""
    found = {}
    for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text):
        for sample in family.samples:
            if sample.name.startswith("dualpath_generate_batch_size_"):
                found[sample.name.rsplit("_", 1)[1]] = sample.value
    return found.get("sum", 0.0), found.get("count", 0.0)


@pytest.fixture(scope="module")
def alone(service_bank, text_encoder) -> list[tuple[int, dict]]:  # noqa: F811
    """Each request's answer from an unbatched server, one request at a time."""
    svc = DualPathService.load(service_bank, service_config(max_batch=1), encoder=text_encoder)
    try:
        with serving(svc) as base:
            answers = [httpx.post(f"{base}/generate", json=r, timeout=60) for r in REQUESTS]
            assert batch_sizes(base) == (0.0, 0.0)  # max_batch 1: nothing was batched
    finally:
        svc.close()
    return [(a.status_code, a.json()) for a in answers]


def test_concurrent_requests_are_batched_and_each_gets_its_answer_alone(service_bank, text_encoder, alone):  # noqa: F811
    # A long window and one worker: every request of the burst joins the same few batches.
    cfg = service_config(max_batch=8, batch_wait_ms=400.0, generation_workers=1)
    svc = DualPathService.load(service_bank, cfg, encoder=text_encoder)
    try:
        with serving(svc) as base, ThreadPoolExecutor(len(REQUESTS)) as pool:
            answers = list(pool.map(lambda r: httpx.post(f"{base}/generate", json=r, timeout=60), REQUESTS))
            requests, batches = batch_sizes(base)
    finally:
        svc.close()
    assert requests == len(REQUESTS) and batches < len(REQUESTS) / 2, (requests, batches)
    assert [a.status_code for a in answers] == [s for s, _ in alone] == [200] * 8 + [422]
    assert "steps must be at most" in answers[-1].json()["detail"]
    for request, answer, (_, single) in zip(REQUESTS[:-1], answers, alone, strict=False):
        body = answer.json()
        assert len(body["steps"]) == request["steps"]
        assert_same(body, single)
    assert answers[2].json()["steps"] != answers[3].json()["steps"]  # the seeds drew differently
    mean, drawn = ([s["c_max"] for s in answers[i].json()["steps"]] for i in (7, 6))
    assert mean != drawn  # the same request with the LVM's mean instead of its sampler's draw
    assert "vector" in answers[4].json()["steps"][0] and "vector" not in answers[0].json()["steps"][0]


def test_a_request_with_bad_input_fails_alone_not_its_batch(service_bank, text_encoder):  # noqa: F811
    svc = DualPathService.load(service_bank, service_config(), encoder=text_encoder)
    try:
        requests = [GenerateRequest(prompt=PROMPT, steps=3), GenerateRequest(prompt="   ", steps=3),
                    GenerateRequest(prompt=PROMPT, steps=3, lane="no-such-lane"),
                    GenerateRequest(prompt=OTHER, steps=3, lane="creative")]
        answers = svc.generate_many(requests)
        assert isinstance(answers[1], InputError) and "prompt is empty" in str(answers[1])
        assert isinstance(answers[2], InputError) and "no-such-lane" in str(answers[2])
        for i in (0, 3):
            assert_same(answers[i], svc.generate(requests[i]))

        # A prompt that passes the checks but fails inside the batch (here: segmenting it fails) makes
        # the batch rerun one request at a time, so that only that request gets the error.
        original = svc.generator.segment_prompt

        def segment(prompt: str) -> list[str]:
            if prompt == "fail":
                raise DualPathError("the prompt holds no text to generate from")
            return original(prompt)

        svc.generator.segment_prompt = segment  # type: ignore[method-assign]
        try:
            answers = svc.generate_many([requests[0], GenerateRequest(prompt="fail", steps=3), requests[3]])
        finally:
            svc.generator.segment_prompt = original  # type: ignore[method-assign]
        assert isinstance(answers[1], DualPathError) and "no text" in str(answers[1])
        assert_same(answers[0], svc.generate(requests[0]))
        assert_same(answers[2], svc.generate(requests[3]))
    finally:
        svc.close()
