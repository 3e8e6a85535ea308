"""The service through a real server (uvicorn on a loopback port): a request's error stays with that request,
every route answers any numeric extreme with a success or a one-line JSON 4xx, a huge query vector keeps its
direction, strict request types, and the body and idle timeouts of a stalled client."""

from __future__ import annotations

import http.client
import json
import math
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dualpath.errors import DualPathError
from dualpath.service import DualPathService, GenerateRequest
from dualpath.service.schemas import MAX_SEED
from live_server import serving
from test_service import PROMPT, service_bank, service_config  # noqa: F401 (service_bank: a fixture)
from test_service_batching import OTHER, assert_same

MAX_PROMPT = 500
JSON_HEADERS = {"content-type": "application/json"}


def batching_server(bank, encoder, window_ms: float) -> Iterator[tuple[DualPathService, str]]:
    """(service, base URL) of a server that batches requests arriving within `window_ms`, on one worker."""
    cfg = service_config(max_batch=8, batch_wait_ms=window_ms, generation_workers=1, max_prompt_chars=MAX_PROMPT)
    svc = DualPathService.load(bank, cfg, encoder=encoder)
    try:
        with serving(svc) as base:
            yield svc, base
    finally:
        svc.close()


@pytest.fixture(scope="module")
def batched(service_bank, text_encoder):  # noqa: F811
    """A long window: a burst shares batches."""
    yield from batching_server(service_bank, text_encoder, 300.0)


@pytest.fixture(scope="module")
def answering(service_bank, text_encoder):  # noqa: F811
    """A short window, for a test that sends one request at a time: each would otherwise wait out `batched`'s
    long window alone."""
    yield from batching_server(service_bank, text_encoder, 10.0)


def normalised(answer: dict) -> dict:
    """An in-process answer as it arrives over HTTP (JSON types)."""
    return json.loads(json.dumps(answer))


_alone: dict[str, dict] = {}


def alone(svc: DualPathService, body: dict) -> dict:
    """The answer `body` gets on its own (in-process, cached per body)."""
    key = json.dumps(body, sort_keys=True)
    if key not in _alone:
        _alone[key] = normalised(svc.generate(GenerateRequest.model_validate(body)))
    return _alone[key]


def assert_one_line_4xx(response: httpx.Response, *fragments: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail, detail
    for fragment in fragments:
        assert fragment in detail, detail


def post_all(base: str, bodies: list) -> list[httpx.Response]:
    """Every body POSTed to /generate at once, each from its own thread."""
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(
            lambda body: httpx.post(f"{base}/generate", content=json.dumps(body), headers=JSON_HEADERS, timeout=120),
            bodies,
        ))


# -- a request's error stays with that request -----------------------------------------------------------------------

VALID = [{"prompt": PROMPT if i % 2 else OTHER, "steps": 1 + i % 3, "seed": i} for i in range(8)]


@pytest.mark.parametrize("bad", [{"seed": -1}, {"seed": -5, "temperature": 0.5}, {"steps": True}, {"lane": "nope"}])
def test_one_bad_request_in_a_burst_fails_alone(batched, bad):
    svc, base = batched
    for _ in range(3):  # batches form differently each time
        answers = post_all(base, [*VALID[:4], {**VALID[0], **bad}, *VALID[4:]])
        bad_answer = answers.pop(4)
        assert_one_line_4xx(bad_answer)
        for body, answer in zip(VALID, answers, strict=True):
            assert answer.status_code == 200, answer.text
            assert_same(answer.json(), alone(svc, body))


LANES = ["conservative", "neutral", "creative", "legal"]
VALID_BODIES = st.fixed_dictionaries(
    {"prompt": st.sampled_from([PROMPT, OTHER]), "steps": st.integers(1, 2)},
    optional={
        "lane": st.sampled_from(LANES),
        "temperature": st.sampled_from([0.0, 0.7]),
        "seed": st.integers(0, MAX_SEED),
        "lvm_temperature": st.sampled_from([0.0, 0.25]),
        "with_vectors": st.booleans(),
    },
)
BREAKS = st.sampled_from([
    {"seed": -1}, {"seed": MAX_SEED + 1}, {"steps": 10_000}, {"steps": 0}, {"steps": True}, {"steps": "2"},
    {"lane": "no-such-lane"}, {"prompt": "   "}, {"prompt": "x. " * MAX_PROMPT}, {"top_p": 0}, {"temperature": -1},
    {"lvm_temperature": 3}, {"with_vectors": 1}, {"bogus": 1},
])
MIXED = st.lists(
    st.one_of(
        VALID_BODIES.map(lambda b: (True, b)),
        st.tuples(VALID_BODIES, BREAKS).map(lambda p: (False, {**p[0], **p[1]})),
    ),
    min_size=2,
    max_size=8,
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=MIXED)
def test_mixed_valid_and_invalid_requests_each_get_their_own_answer(batched, requests):
    svc, base = batched
    answers = post_all(base, [body for _, body in requests])
    for (valid, body), answer in zip(requests, answers, strict=True):
        if valid:
            assert answer.status_code == 200, (body, answer.text)
            assert_same(answer.json(), alone(svc, body))
        else:
            assert_one_line_4xx(answer)


def test_an_error_that_is_not_bad_input_stays_with_its_request(batched):
    """A request the schema would refuse, built past it: its decoder fails with a plain ValueError inside the
    batch, and the other requests of the batch still get their answers."""
    svc, _ = batched
    broken = GenerateRequest.model_construct(**{**GenerateRequest(prompt=PROMPT).model_dump(), "seed": -1})
    good = [GenerateRequest.model_validate(body) for body in VALID[:3]]
    answers = svc.generate_many([good[0], broken, good[1], good[2]])
    assert isinstance(answers[1], Exception) and not isinstance(answers[1], DualPathError)
    for request, answer in zip(good, [answers[0], *answers[2:]], strict=True):
        assert_same(normalised(answer), normalised(svc.generate(request)))


def test_a_negative_seed_is_a_422_and_the_connection_stays_open(batched):
    _, base = batched
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        for path in ("/generate", "/generate/stream", "/generate"):
            conn.request("POST", path, body=json.dumps({"prompt": PROMPT, "seed": -5}), headers=JSON_HEADERS)
            first = conn.sock
            response = conn.getresponse()
            body = json.loads(response.read())
            assert response.status == 422 and "seed" in body["detail"] and "\n" not in body["detail"]
            conn.request("POST", "/generate", body=json.dumps({"prompt": PROMPT, "steps": 1}), headers=JSON_HEADERS)
            assert conn.sock is first, "the keep-alive connection was kept"
            response = conn.getresponse()
            assert response.status == 200 and len(json.loads(response.read())["steps"]) == 1
    finally:
        conn.close()


# -- search vectors of any finite size -----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e160, 1e300, 1e-300, 5e-320])
def test_a_huge_or_tiny_vector_keeps_its_direction(batched, scale):
    svc, base = batched
    vector = svc.generator.bank.vectors(np.array([7]))[0].astype(np.float64)
    plain = httpx.post(f"{base}/search", json={"vector": vector.tolist(), "k": 5}, timeout=60).json()["results"]
    scaled = httpx.post(f"{base}/search", json={"vector": (vector * scale).tolist(), "k": 5}, timeout=60)
    assert scaled.status_code == 200, scaled.text
    results = scaled.json()["results"]
    assert [r["id"] for r in results] == [r["id"] for r in plain] and results[0]["id"] == 7
    assert math.isclose(results[0]["score"], 1.0, abs_tol=1e-4)


# -- strict types --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/generate", {"prompt": PROMPT, "steps": True}, "steps"),
        ("/generate", {"prompt": PROMPT, "steps": "2"}, "steps"),
        ("/generate", {"prompt": PROMPT, "steps": 2.0}, "steps"),
        ("/generate", {"prompt": PROMPT, "seed": "7"}, "seed"),
        ("/generate", {"prompt": PROMPT, "with_vectors": 1}, "with_vectors"),
        ("/generate", {"prompt": PROMPT, "temperature": "0.5"}, "temperature"),
        ("/generate/stream", {"prompt": PROMPT, "top_k": False}, "top_k"),
        ("/search", {"text": "moon", "k": True}, "k"),
        ("/search", {"vector": ["1"] * 384}, "vector"),
        ("/search", {"text": 5}, "text"),
    ],
)
def test_request_types_are_strict(batched, path, body, field):
    _, base = batched
    assert_one_line_4xx(httpx.post(f"{base}{path}", json=body, timeout=60), field)


def test_a_float_field_takes_an_integer(batched):
    _, base = batched
    body = {"prompt": PROMPT, "steps": 1, "temperature": 1, "top_p": 1}
    answer = httpx.post(f"{base}/generate", json=body, timeout=60)
    assert answer.status_code == 200, answer.text


# -- every route, every numeric field at its extremes -----------------------------------------------------------------

EXTREMES = [
    -1, 0, 1, 2, -(2**31), 2**31, 2**63, MAX_SEED, MAX_SEED + 1, 10**30, -(10**30), 10**400,
    1e308, -1e308, 5e-324, 0.5, -0.0, math.nan, math.inf, -math.inf, True, False, "1", None, [], {},
]
GENERATE_BASE = {"prompt": PROMPT, "steps": 1}
NUMERIC = [
    *((path, GENERATE_BASE, field) for path in ("/generate", "/generate/stream")
      for field in ("steps", "temperature", "top_k", "top_p", "seed", "lvm_temperature")),
    ("/search", {"text": "volcano"}, "k"),
    ("/search", {}, "vector"),
]
GET_ROUTES = ["/healthz", "/readyz", "/info", "/telemetry", "/metrics", "/", "/docs", "/openapi.json"]


def assert_answered(response: httpx.Response, where: str) -> None:
    """A success, or a one-line JSON 4xx: never a 5xx, a traceback or a dropped connection."""
    assert response.status_code < 500, (where, response.status_code, response.text[:500])
    if response.status_code >= 400:
        detail = response.json()["detail"]
        assert isinstance(detail, str) and detail and "\n" not in detail, (where, detail)


def test_every_route_answers_every_numeric_extreme(answering):
    svc, base = answering
    dim = svc.generator.bank.dim
    with httpx.Client(base_url=base, timeout=120) as client:
        for path in GET_ROUTES:
            assert client.get(path).status_code == 200, path
        limits = client.get("/info").json()["limits"]
        assert limits["body_timeout_s"] == 10.0 and limits["idle_timeout_s"] == 5.0, limits
        for value in EXTREMES:
            if isinstance(value, int | float | str):
                assert_answered(client.get("/telemetry", params={"limit": value}), f"/telemetry?limit={value}")

        def send(path: str, base_body: dict, field: str, value: object) -> None:
            body = {**base_body, field: [value] * dim if field == "vector" else value}
            where = f"{path} {field}={value!r}"
            with client.stream("POST", path, content=json.dumps(body), headers=JSON_HEADERS) as response:
                response.read()  # the whole stream, for /generate/stream
            assert_answered(response, where)
            if response.status_code == 200 and path == "/generate/stream":
                assert "event: done" in response.text, where

        # A few at a time, as clients send them: the service batches what arrives together.
        with ThreadPoolExecutor(4) as pool:
            for done in [pool.submit(send, *case, value) for value in EXTREMES for case in NUMERIC]:
                done.result()


# -- stalled clients: the body and idle timeouts ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(service_bank, text_encoder):  # noqa: F811
    cfg = service_config(body_timeout_s=1.0, idle_timeout_s=1.0)
    svc = DualPathService.load(service_bank, cfg, encoder=text_encoder)
    try:
        with serving(svc) as base:
            yield base
    finally:
        svc.close()


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_stalled_bodies_get_a_408_and_idle_connections_close(impatient):
    parts = urlsplit(impatient)
    address = (parts.hostname, parts.port)
    head = (
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        b'{"prompt": "The Moon'
    )
    stalled, silent, slow_headers = [], [], []
    start = time.monotonic()
    for _ in range(60):
        sock = socket.create_connection(address, timeout=15)
        sock.sendall(head)
        stalled.append(sock)
    for _ in range(10):
        silent.append(socket.create_connection(address, timeout=15))
        sock = socket.create_connection(address, timeout=15)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        slow_headers.append(sock)
    kept_alive = socket.create_connection(address, timeout=15)  # one answered request, then idle
    kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    # Meanwhile the server answers others at once.
    assert httpx.get(f"{impatient}/healthz", timeout=5).status_code == 200
    for sock in stalled:
        answer = read_until_closed(sock)
        status, _, rest = answer.partition(b"\r\n")
        assert b" 408 " in status, answer[:300]
        detail = json.loads(rest.split(b"\r\n\r\n", 1)[1])["detail"]
        assert "not received within 1 s" in detail and "\n" not in detail
    for sock in silent + slow_headers:
        assert read_until_closed(sock) == b"", "closed without an answer"
    assert read_until_closed(kept_alive).startswith(b"HTTP/1.1 200 "), "answered, then closed once idle"
    elapsed = time.monotonic() - start
    assert elapsed < 10, f"stalled connections were held {elapsed:.1f} s"
    for sock in [*stalled, *silent, *slow_headers, kept_alive]:
        sock.close()
    # A client that sends its body in time is served as before.
    answer = httpx.post(f"{impatient}/generate", json={"prompt": PROMPT, "steps": 1}, timeout=60)
    assert answer.status_code == 200, answer.text
