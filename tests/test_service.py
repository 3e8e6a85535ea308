"""The HTTP API on a small real bank with briefly trained, calibrated models: every route, every bad
input, the API-key rule, metrics, and concurrent requests."""

from __future__ import annotations

import base64
import gc
import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from dualpath.decider import FEATURES, Decision
from dualpath.pipeline.calibrate import calibrate_bank
from dualpath.pipeline.generator import Generator, NearestConceptRenderer
from dualpath.service import DualPathService, GenerateRequest, SearchRequest, check_bind, create_app, is_loopback
from trained_models import tiny_config

PROMPT = "The Moon is Earth's only natural satellite. It orbits the planet at an average distance of 384,400 km."
KEY = "s3cret-key"
DECISIONS = {d.value for d in Decision}


def service_config(**service):
    cfg = tiny_config()
    return cfg.model_copy(update={"service": cfg.service.model_copy(update=service)})


@pytest.fixture(scope="module")
def service_bank(trained_bank_path, tmp_path_factory) -> Path:
    """A calibrated copy of the trained bank, so that lanes give a real mix of decisions."""
    out = tmp_path_factory.mktemp("service") / "bank"
    shutil.copytree(trained_bank_path, out)
    generator = Generator.from_bank(out, tiny_config())
    try:
        calibrate_bank(generator.bank, generator.lvm, generator.tower, tiny_config())
    finally:
        generator.close()
        generator.bank.close()
    return out


@pytest.fixture(scope="module")
def service(service_bank, text_encoder):
    cfg = service_config(max_prompt_chars=500, max_k=50, max_body_bytes=16_384)
    svc = DualPathService.load(service_bank, cfg, encoder=text_encoder)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


@pytest.fixture(scope="module")
def keyed_client(service):
    keyed = DualPathService(service.generator, service_config(api_key=KEY), metrics=None)
    with TestClient(create_app(keyed)) as c:
        yield c


class SlowRenderer(NearestConceptRenderer):
    """The real renderer, 50 ms slower per step: a slow decoder (e.g. an inversion model) holding a worker."""

    def render(self, vectors, exclude):
        time.sleep(0.05)
        return super().render(vectors, exclude)


def slow_generator(g: Generator) -> Generator:
    return Generator(g.bank, g.lvm, g.tower, g.lanes, g.cfg, renderer=SlowRenderer(g.bank))


def strict_json(text: str):
    """JSON as a browser parses it: NaN and Infinity are errors."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))


def metric(client, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def assert_error(response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail
    for fragment in fragments:
        assert fragment in detail


# -- health, info, docs -------------------------------------------------------------------------------


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_readyz_is_503_once_the_app_shuts_down(service):
    app = create_app(service)
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
    # After the lifespan's shutdown (a plain, non-context client does not run it again).
    late = TestClient(app)
    assert_error(late.get("/readyz"), 503, "shutting down")
    assert late.get("/healthz").status_code == 200


def test_a_running_server_keeps_what_it_loaded_out_of_the_collectors_passes(service):
    """The models, bank and libraries live as long as the server: while it runs they are frozen out of the
    collector's full passes (a pass over them took 0.1-0.3 s, on whichever step was running), and they are
    handed back to it at shutdown."""
    gc.unfreeze()  # whatever an app of an earlier test left frozen
    assert any(o is service for o in gc.get_objects())
    with TestClient(create_app(service)) as c:
        assert gc.get_freeze_count() > 0
        assert not any(o is service for o in gc.get_objects())
        assert c.post("/generate", json={"prompt": "Alpha one. Beta two.", "steps": 2}).status_code == 200
    assert gc.get_freeze_count() == 0
    assert any(o is service for o in gc.get_objects())


def test_info_describes_bank_models_lanes_and_limits(client, service):
    info = client.get("/info").json()
    bank = service.generator.bank
    assert info["bank"]["concepts"] == len(bank) and info["bank"]["dim"] == bank.dim
    assert info["models"]["query_source"] == "tower"
    assert info["limits"]["max_k"] == 50 and info["limits"]["max_prompt_chars"] == 500
    neutral = info["lanes"]["neutral"]
    assert neutral["calibrated"] is True and neutral["tau_novel"] < neutral["tau_snap"]
    assert info["default_lane"] in info["lanes"]


def test_openapi_lists_every_route(client):
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/healthz", "/readyz", "/info", "/search", "/generate", "/generate/stream", "/telemetry", "/metrics"):
        assert route in paths


# -- search -------------------------------------------------------------------------------------------


def test_search_by_text_returns_ranked_bank_concepts(client, service):
    body = client.post("/search", json={"text": "The Moon orbits the Earth.", "k": 7}).json()
    results = body["results"]
    assert len(results) == 7
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    bank = service.generator.bank
    assert [r["text"] for r in results] == bank.texts([r["id"] for r in results])
    # The same query searched directly gives the same ids.
    ids, _ = bank.search(bank.encoder().encode(["The Moon orbits the Earth."]), 7)
    assert [r["id"] for r in results] == ids[0].tolist()


def test_search_by_vector_finds_the_concept_itself(client, service):
    bank = service.generator.bank
    vector = bank.vectors([42])[0] * 3.0  # any length: the service normalises
    results = client.post("/search", json={"vector": vector.tolist(), "k": 3}).json()["results"]
    assert results[0]["id"] == 42
    assert results[0]["score"] == pytest.approx(1.0, abs=2e-3)


def test_search_within_a_domain(client, service):
    domain = next(d for d in service.generator.bank.domains() if d is not None)
    results = client.post("/search", json={"text": "a famous event", "k": 10, "domain": domain}).json()["results"]
    assert results and all(r["domain"] == domain for r in results)
    assert_error(client.post("/search", json={"text": "x", "domain": "Astrology"}), 422, "unknown domain")


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"text": "x", "k": 51}, 422, "k must be at most 50"),
        ({"text": "x", "k": 0}, 422, "k:"),
        ({"vector": [0.1, 0.2, 0.3], "k": 3}, 422, "vector has 3 dimensions"),
        ({"vector": []}, 422, "vector has 0 dimensions"),
        ({"text": "x", "vector": [1.0]}, 422, "exactly one of"),
        ({"k": 3}, 422, "exactly one of"),
        ({"text": "x" * 501}, 422, "limit is 500"),
        ({"text": "   "}, 422, "text is empty"),
        ({"text": "x", "query": "y"}, 422, "query: unknown field"),
        ({"text": 5}, 422, "text:"),
    ],
)
def test_search_bad_input_gets_a_one_line_4xx(client, body, status, fragment):
    assert_error(client.post("/search", json=body), status, fragment)


def test_search_rejects_zero_and_non_finite_vectors(client, service):
    dim = service.generator.bank.dim
    assert_error(client.post("/search", json={"vector": [0.0] * dim}), 422, "all zeros")
    # Python's json (and so the server) reads NaN; the service must not search with it.
    raw = '{"vector": [NaN' + ", 0.5" * (dim - 1) + "]}"
    assert_error(client.post("/search", content=raw, headers={"content-type": "application/json"}), 422, "NaN")


@pytest.mark.parametrize("path", ["/search", "/generate", "/generate/stream"])
def test_malformed_json_missing_body_and_oversized_body(client, path):
    headers = {"content-type": "application/json"}
    assert_error(client.post(path, content='{"text": "x",', headers=headers), 400, "malformed JSON")
    assert_error(client.post(path, content="", headers=headers), 422, "JSON body is required")
    assert_error(client.post(path, content="[1, 2]", headers=headers), 422, "body:")
    assert_error(client.post(path, json={"text": "x" * 20_000}), 413, "larger than 16384 bytes")
    # Chunked, with no Content-Length: refused as the body arrives.
    chunks = iter([b'{"text": "', b"x" * 10_000, b"x" * 10_000, b'"}'])
    assert_error(client.post(path, content=chunks, headers=headers), 413, "larger than 16384 bytes")


# -- generation ---------------------------------------------------------------------------------------


def test_generate_returns_every_step_with_its_decision(client):
    body = client.post("/generate", json={"prompt": PROMPT, "steps": 6, "lane": "conservative"}).json()
    steps = body["steps"]
    assert [s["step"] for s in steps] == list(range(6))
    assert body["lane"]["name"] == "conservative" and body["lane"]["calibrated"] is True
    for s in steps:
        assert s["lane"] == "conservative" and s["decision"] in DECISIONS
        assert s["query_source"] == "tower" and "vector" not in s
        assert set(s["stage_latency_ms"]) >= {"lvm", "query", "search", "decide", "render", "total"}
        # Conservative grounds on evidence: every step says how likely its candidate was, and why.
        assert 0.0 <= s["confidence"] <= 1.0 and s["c_pick"] == s["confidence"]
        if s["candidate_source"] is not None:
            assert s["candidate_source"] in ("tower", "lvm", "successor")
            assert set(s["evidence"]) == set(FEATURES)
    assert body["lane"]["rule"] == "confidence"
    assert body["text"] == " ".join(s["text"] for s in steps if s["text"])


def test_generate_samples_with_a_seed_and_never_repeats_a_concept(client):
    body = {"prompt": PROMPT, "steps": 8, "lane": "neutral", "temperature": 1.0, "top_k": 5, "seed": 7}
    first = client.post("/generate", json=body).json()["steps"]
    again = client.post("/generate", json=body).json()["steps"]
    assert [s["text_concept_id"] for s in first] == [s["text_concept_id"] for s in again]
    shown = [s["text_concept_id"] for s in first]
    assert len(set(shown)) == len(shown)


def test_generate_default_lane_and_steps_and_vectors(client, service):
    body = client.post("/generate", json={"prompt": PROMPT, "with_vectors": True}).json()
    assert len(body["steps"]) == service.cfg.generation.steps
    assert body["lane"]["name"] == service.cfg.decider.default_lane
    vector = np.array(body["steps"][0]["vector"])
    assert vector.shape == (service.generator.bank.dim,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("path", ["/generate", "/generate/stream"])
@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"prompt": PROMPT, "lane": "reckless"}, "unknown lane 'reckless'; known lanes: conservative"),
        ({"prompt": PROMPT, "steps": 65}, "steps must be at most 64"),
        ({"prompt": PROMPT, "steps": 0}, "steps:"),
        ({"prompt": "x" * 501}, "limit is 500"),
        ({"prompt": " \n "}, "prompt is empty"),
        ({"steps": 3}, "prompt: Field required"),
        ({"prompt": PROMPT, "temperature": -0.5}, "temperature: Input should be greater than or equal to 0"),
        ({"prompt": PROMPT, "top_p": 0}, "top_p: Input should be greater than 0"),
        ({"prompt": PROMPT, "lvm_temperature": 3}, "lvm_temperature: Input should be less than or equal to 2"),
        ({"prompt": PROMPT, "nucleus": 0.7}, "nucleus: unknown field"),
    ],
)
def test_generate_bad_input_gets_a_one_line_422(client, path, body, fragment):
    assert_error(client.post(path, json=body), 422, fragment)


def read_events(client, body: dict) -> list[tuple[str, dict]]:
    with client.stream("POST", "/generate/stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = []
    for frame in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines["event"], strict_json(lines["data"])))
    return events


def test_stream_sends_start_each_step_then_done_and_matches_generate(client, service):
    request = {"prompt": PROMPT, "steps": 5, "lane": "creative"}
    events = read_events(client, request)
    kinds = [kind for kind, _ in events]
    assert kinds == ["start"] + ["step"] * 5 + ["done"]
    assert events[0][1]["lane"]["name"] == "creative"
    streamed = [data for kind, data in events if kind == "step"]
    assert events[-1][1] == {"steps": 5, "text": " ".join(s["text"] for s in streamed if s["text"])}
    # No state carries over between requests: the same request gives the same steps, streamed or not.
    answer = client.post("/generate", json=request).json()
    whole = answer["steps"]
    fields = ("step", "decision", "c_max", "alpha", "neighbour_id", "text")
    assert [[s[f] for f in fields] for s in streamed] == [[s[f] for f in fields] for s in whole]
    # Both say what the bank holds of the prompt: match_prompt's list, as JSON.
    assert events[0][1]["prompt"] == answer["prompt"]
    assert answer["prompt"] == [
        {"sentence": m.sentence, "concept_id": m.concept_id, "text": m.text, "cosine": m.cosine, "said": m.said}
        for m in service.generator.match_prompt(PROMPT)
    ] and len(answer["prompt"]) == 2
    assert client.get("/info").json()["prompt_anchor_cosine"] == service.generator.cfg.generation.prompt_anchor_cosine


def test_concurrent_generations_match_sequential_ones(client):
    requests = [
        {"prompt": PROMPT, "steps": 8, "lane": lane}
        for lane in ("conservative", "neutral", "creative", "legal")
    ] + [{"prompt": "Mount Everest is the highest mountain on Earth. It lies in the Himalayas.", "steps": 8}]

    def run(request: dict) -> tuple[list, list]:
        steps = client.post("/generate", json=request).json()["steps"]
        return [(s["decision"], s["neighbour_id"], s["text"]) for s in steps], [s["c_max"] for s in steps]

    sequential = [run(r) for r in requests]
    with ThreadPoolExecutor(len(requests) * 2) as pool:
        concurrent = list(pool.map(run, requests * 2))
    # Concurrent requests may be computed as one batch, whose matrix products round differently.
    assert [steps for steps, _ in concurrent] == [steps for steps, _ in sequential] * 2
    for (_, c_max), (_, alone) in zip(concurrent, sequential * 2, strict=True):
        assert c_max == pytest.approx(alone, abs=1e-5)


def test_event_loop_answers_while_generations_compute(service):
    """Generation runs in worker threads: health checks answer while slow generations are in flight."""

    app = create_app(DualPathService(slow_generator(service.generator), service.cfg))
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        running = [pool.submit(c.post, "/generate", json={"prompt": PROMPT, "steps": 20, "lane": "creative"})]
        running.append(pool.submit(c.post, "/generate", json={"prompt": PROMPT, "steps": 20}))
        time.sleep(0.2)
        answered = []
        while not all(f.done() for f in running):
            start = time.perf_counter()
            assert c.get("/healthz").status_code == 200
            answered.append(time.perf_counter() - start)
            time.sleep(0.05)
        assert all(f.result().status_code == 200 for f in running)
    assert len(answered) >= 5, "the generations finished too quickly to test anything"
    assert max(answered) < 0.5


# -- telemetry and metrics ----------------------------------------------------------------------------


def test_telemetry_records_every_step_and_summarises_per_lane(client):
    before = client.get("/telemetry?limit=0").json()["recorded"]
    steps = client.post("/generate", json={"prompt": PROMPT, "steps": 4, "lane": "legal"}).json()["steps"]
    telemetry = strict_json(client.get("/telemetry?limit=4").text)
    assert telemetry["recorded"] == before + 4
    records = telemetry["records"]
    assert [(r["step"], r["decision"], r["c_max"]) for r in records] == [
        (s["step"], s["decision"], s["c_max"]) for s in steps
    ]
    for r in records:
        if r["neighbour_id"] is not None:
            assert r["neighbour_text"]
    legal = telemetry["summary"]["lanes"]["legal"]
    assert legal["count"] >= 4
    assert sum(v["count"] for v in legal["decisions"].values()) == legal["count"]
    histogram = telemetry["c_max_histogram"]
    assert len(histogram["edges"]) == 51
    binned = sum(sum(counts) for counts in histogram["lanes"]["legal"].values())
    assert binned == legal["count"] - legal["fallbacks"].get("empty", 0)


def test_telemetry_limit_is_bounded(client, service):
    assert_error(client.get("/telemetry?limit=-1"), 422, "limit:")
    too_many = service.cfg.service.telemetry_records + 1
    assert_error(client.get(f"/telemetry?limit={too_many}"), 422, "limit:")


def test_metrics_count_requests_stages_and_decisions(client):
    searches = metric(client, "dualpath_http_requests_total", endpoint="/search", status="200")
    rejected = metric(client, "dualpath_http_requests_total", endpoint="/search", status="422")
    lvm_steps = metric(client, "dualpath_generation_stage_duration_seconds_count", stage="lvm")
    neutral = metric(client, "dualpath_decisions_total", lane="neutral")

    client.post("/search", json={"text": "volcano", "k": 2})
    client.post("/search", json={"text": "volcano", "k": 9999})
    client.post("/generate", json={"prompt": PROMPT, "steps": 3, "lane": "neutral"})
    client.get("/no/such/page")

    assert metric(client, "dualpath_http_requests_total", endpoint="/search", status="200") == searches + 1
    assert metric(client, "dualpath_http_requests_total", endpoint="/search", status="422") == rejected + 1
    assert metric(client, "dualpath_generation_stage_duration_seconds_count", stage="lvm") == lvm_steps + 3
    assert metric(client, "dualpath_decisions_total", lane="neutral") == neutral + 3
    assert metric(client, "dualpath_http_requests_total", endpoint="unmatched", status="404") >= 1
    assert metric(client, "dualpath_http_request_duration_seconds_count", endpoint="/generate") >= 1
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


# -- the API key and the bind rule --------------------------------------------------------------------


def test_api_key_is_required_everywhere_but_the_health_checks(keyed_client):
    c = keyed_client
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 200
    for method, path in [("GET", "/info"), ("POST", "/search"), ("POST", "/generate"), ("POST", "/generate/stream"),
                         ("GET", "/telemetry"), ("GET", "/metrics"), ("GET", "/"), ("GET", "/static/dashboard.js"),
                         ("GET", "/docs"), ("GET", "/openapi.json")]:
        response = c.request(method, path, json={"text": "x"} if method == "POST" else None)
        assert_error(response, 401, "missing API key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert_error(c.get("/info", headers={"X-API-Key": "guess"}), 401, "wrong API key")
    assert_error(c.get("/info", headers={"Authorization": f"Bearer {KEY}x"}), 401, "wrong API key")


def test_api_key_accepted_as_header_bearer_or_basic_password(keyed_client):
    basic = base64.b64encode(f"anyone:{KEY}".encode()).decode()
    for headers in ({"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Basic {basic}"}):
        assert keyed_client.post("/search", json={"text": "rivers", "k": 2}, headers=headers).status_code == 200
    # A browser navigating to the dashboard is asked for the key (Basic), so it can send it from then on.
    page = keyed_client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")
    assert keyed_client.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200


def test_bind_rule():
    for host in ("127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""):
        assert not is_loopback(host)
        with pytest.raises(Exception, match="refusing to bind"):
            check_bind(host, None)
        check_bind(host, KEY)


@given(st.ip_addresses(v=4))
def test_only_loopback_addresses_bind_without_a_key(address):
    if int(address) >> 24 == 127:  # 127.0.0.0/8
        check_bind(str(address), None)
    else:
        with pytest.raises(Exception, match="refusing to bind"):
            check_bind(str(address), None)


def run_cli(capsys, *args: str) -> tuple[int, str]:
    from dualpath.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main(list(args))
    return int(exited.value.code), capsys.readouterr().err


def test_cli_refuses_a_public_bind_without_a_key(tmp_path, capsys):
    # The bind is checked before the bank is opened, so any path will do.
    code, err = run_cli(capsys, "serve", "--bank", str(tmp_path), "--host", "0.0.0.0")
    assert code == 2
    assert err.strip().count("\n") == 0 and "refusing to bind to 0.0.0.0 without an API key" in err


def test_cli_reports_a_missing_bank_in_one_line(tmp_path, capsys):
    code, err = run_cli(capsys, "serve", "--bank", str(tmp_path / "none"), "--port", "1")
    assert code == 2 and "Traceback" not in err
    assert err.strip().startswith("error:") and err.strip().count("\n") == 0


# -- any body at all: a clear 4xx or a success, never a crash ---------------------------------------------

# Any unicode, lone surrogates included: json.dumps escapes them ("\ud800"), which is how a client sends them.
# Surrogates are drawn on their own too: 2,048 of 1.1 M code points would rarely come up otherwise.
ANY_TEXT = st.text(st.characters(exclude_categories=()) | st.characters(categories=["Cs"]), max_size=30)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-10, 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
    | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(["text", "vector", "k", "domain", "prompt", "steps", "lane", "with_vectors", "x"])


@settings(max_examples=60, deadline=None)
@example(path="/search", body={"text": "A \ud800 b."})  # the cases, always tried first
@example(path="/generate", body={"prompt": "A \ud800 b. The Moon.", "steps": 1})
@given(
    path=st.sampled_from(["/search", "/generate"]),
    body=st.dictionaries(FIELDS, JSON_VALUES, max_size=4) | JSON_VALUES,  # any JSON shape at the top too
)
def test_any_json_body_gets_success_or_a_one_line_4xx(client, path, body):
    if isinstance(body, dict) and isinstance(body.get("steps"), int) and not isinstance(body.get("steps"), bool):
        body["steps"] = min(body["steps"], 3)  # keep the successful generations short
    # content=, not json=: httpx encodes JSON as UTF-8 without escapes and cannot send a lone surrogate.
    response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    assert response.status_code in (200, 400, 413, 422), response.text
    if response.status_code != 200:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail


# -- the in-process API (what the load test's baseline calls) -----------------------------------------


def test_in_process_calls_match_http(client, service):
    via_http = client.post("/search", json={"text": "ancient Egypt", "k": 5}).json()["results"]
    direct = service.search(SearchRequest(text="ancient Egypt", k=5))["results"]
    assert [r["id"] for r in direct] == [r["id"] for r in via_http]
    whole = service.generate(GenerateRequest(prompt=PROMPT, steps=2, lane="legal"))
    assert len(whole["steps"]) == 2 and all(math.isfinite(s["latency_ms"]) for s in whole["steps"])


# -- malformed text and fuzzed bodies (issue 16) ------------------------------------------------------------

JSON_HEADERS = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/search", '{"text": "A \\ud800 b. Volcanoes."}'),
        ("/search", '{"text": "volcano", "domain": "\\udfff"}'),
        ("/generate", '{"prompt": "A \\ud800 b. The Moon."}'),
        ("/generate", '{"prompt": "The Moon orbits.", "lane": "\\ud800"}'),
        ("/generate/stream", '{"prompt": "\\udc80"}'),
    ],
)
def test_lone_surrogates_get_a_4xx_json_answer(client, path, raw):
    assert_error(client.post(path, content=raw, headers=JSON_HEADERS), 422, "invalid Unicode")


@pytest.mark.parametrize("key", ["", "   ", "\t\n"])
def test_a_blank_api_key_is_refused(key, tmp_path, monkeypatch):
    from dualpath.config import DualPathConfig
    from dualpath.errors import ConfigError
    from test_cli_errors import assert_one_line_error, run_dualpath

    with pytest.raises(ConfigError, match="empty or only whitespace"):
        DualPathConfig.from_dict({"service": {"api_key": key}}, source="test")
    with pytest.raises(Exception, match="without an API key"):
        check_bind("0.0.0.0", key)
    if key:  # (an empty variable reads as unset) through the installed command: one line, exit 2
        monkeypatch.setenv("DUALPATH_API_KEY", key)
        assert_one_line_error(run_dualpath("serve", "--bank", str(tmp_path), "--host", "0.0.0.0"), "API key")
