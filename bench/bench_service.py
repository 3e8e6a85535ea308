"""Loopback load test of `dualpath serve`, beside the same calls made in-process in the same run.

Starts the real server (`dualpath serve`, a separate process) on a free 127.0.0.1 port and sends
it a bounded load: `--search` requests to POST /search (half by text, half by vector) and
`--generate` requests to POST /generate, first from one client (the per-request cost of HTTP),
then from `--clients` concurrent clients (throughput and tail latency under load). Every request
must succeed, and the server's memory (RSS) must not grow between two identical rounds of load.
The baseline is the same requests made by calling `DualPathService` directly in this process.
Every request loop is bounded by count and by `--time-cap`; nothing leaves the loopback address.

    .venv/bin/python bench/bench_service.py [--bank DIR] [--quick] [--json out.json]

Then the micro-batching comparison: the same POST /generate load from 1 and from `--clients`
clients against a server started unbatched (`service.max_batch: 1`, the baseline) and batched
(with and without a wait), the settings alternating over two rounds, reported as ratios to the
unbatched server in the same run (`--batching-only` runs just this).

Without `--bank` it builds a bank of `--docs` wiki-sample articles with tiny trained, calibrated
models in a temporary directory (a minute or two on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import yaml

from dualpath.bank import ConceptBank
from dualpath.bank.layout import lvm_dir, tower_dir
from dualpath.config import DualPathConfig
from dualpath.corpus import WIKI_SAMPLE, load_documents
from dualpath.fileio import write_json_atomic
from dualpath.runtime import torch_threads
from dualpath.service import DualPathService, GenerateRequest, SearchRequest

LANES = ("conservative", "neutral", "creative", "legal")
RSS_GROWTH_LIMIT_MB = 16.0  # between two identical rounds; allocator noise stays well below


@dataclass
class Run:
    """Latencies (ms) of one phase, its wall time, and what went wrong."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    capped: bool = False

    def stats(self) -> dict[str, float]:
        ms = np.asarray(self.latencies_ms) if self.latencies_ms else np.full(1, np.nan)
        return {
            "requests": len(self.latencies_ms),
            "errors": len(self.errors),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "per_s": len(self.latencies_ms) / self.wall_s if self.wall_s else float("nan"),
            "capped": self.capped,
        }


# -- the workload -------------------------------------------------------------------------------------


def make_workload(bank: ConceptBank, n_search: int, n_generate: int, steps: int, seed: int = 0) -> dict[str, list]:
    """Request bodies by kind: searches by the text or by the vector of random bank concepts (half
    each), generations from two-concept prompts of random documents, lanes in turn. Deterministic."""
    rng = random.Random(seed)
    ids = [rng.randrange(len(bank)) for _ in range(n_search)]
    text = [{"text": t, "k": 10} for t in bank.texts(ids[: n_search // 2])]
    vector = [{"vector": v.tolist(), "k": 10} for v in bank.vectors(ids[n_search // 2 :])]
    documents = [doc for doc in bank.documents().values() if len(doc) >= 2]
    generations = []
    for i in range(n_generate):
        doc = rng.choice(documents)
        generations.append({"prompt": " ".join(bank.texts(doc[:2])), "steps": steps, "lane": LANES[i % len(LANES)]})
    return {"search_text": text, "search_vector": vector, "generate": generations}


PATHS = {"search_text": "/search", "search_vector": "/search", "generate": "/generate"}


# -- in-process baseline ------------------------------------------------------------------------------


def run_in_process(call: Callable[[dict], object], bodies: list[dict], deadline: float) -> Run:
    run = Run()
    start = time.perf_counter()
    for body in bodies:
        if time.monotonic() > deadline:
            run.capped = True
            break
        t0 = time.perf_counter()
        try:
            call(body)
        except Exception as err:  # the report counts errors; it must not stop at the first
            run.errors.append(repr(err))
        run.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
    run.wall_s = time.perf_counter() - start
    return run


# -- over HTTP ----------------------------------------------------------------------------------------


async def run_http(base: str, path: str, bodies: list[dict], clients: int, deadline: float) -> Run:
    """`clients` concurrent clients (one keep-alive connection each) working through `bodies`."""
    run = Run()
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def client() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=120.0) as http:
            while not queue.empty():
                if time.monotonic() > deadline:
                    run.capped = True
                    return
                body = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    response = await http.post(path, json=body)
                    if response.status_code != 200:
                        run.errors.append(f"{response.status_code} {response.text[:200]}")
                except httpx.HTTPError as err:
                    run.errors.append(repr(err))
                run.latencies_ms.append((time.perf_counter() - t0) * 1000.0)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    run.wall_s = time.perf_counter() - start
    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(bank: Path, port: int, log: Path, config: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "dualpath.cli.main", "-q", "serve", "--bank", str(bank),
               "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    if config is not None:
        command += ["--config", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    server = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.terminate()
    raise SystemExit(f"the server did not become ready in 180 s; see {log}")


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


# -- a bank to serve ----------------------------------------------------------------------------------


def build_bank(out: Path, docs: int) -> Path:
    """A wiki-sample bank with a briefly trained LVM and tower, calibrated: what `dualpath demo` builds."""
    from dualpath.pipeline.calibrate import calibrate_bank
    from dualpath.pipeline.generator import Generator
    from dualpath.training.lvm import train_lvm
    from dualpath.training.retriever import train_retriever

    cfg = DualPathConfig.from_dict(
        {"lvm": {"hidden": 128, "epochs": 2, "batch_size": 128}, "tower": {"hidden": 128, "epochs": 2}}
    )
    documents = list(load_documents(WIKI_SAMPLE))
    stride = max(1, len(documents) // docs)
    with ConceptBank.build(documents[::stride][:docs], out, cfg) as bank:
        train_lvm(bank, cfg, lvm_dir(out))
        train_retriever(bank, cfg, tower_dir(out))
    generator = Generator.from_bank(out, cfg)
    try:
        calibrate_bank(generator.bank, generator.lvm, generator.tower, cfg)
    finally:
        generator.close()
        generator.bank.close()
    return out


# -- the run ------------------------------------------------------------------------------------------


def run(bank_path: Path, clients: int, n_search: int, n_generate: int, steps: int, time_cap: float) -> dict:
    deadline = time.monotonic() + time_cap
    cfg = DualPathConfig()
    service = DualPathService.load(bank_path, cfg)
    workload = make_workload(service.generator.bank, n_search, n_generate, steps)
    results: dict = {"setup": {"clients": clients, "search": n_search, "generate": n_generate, "steps": steps,
                               "bank_concepts": len(service.generator.bank), "time_cap_s": time_cap}}

    # Baseline: the same calls, in this process, one after another (no server runs meanwhile), with
    # the torch threads the server uses.
    calls = {
        "search_text": lambda b: service.search(SearchRequest(**b)),
        "search_vector": lambda b: service.search(SearchRequest(**b)),
        "generate": lambda b: service.generate(GenerateRequest(**b)),
    }
    with torch_threads(cfg.service.threads_per_request):
        service.limit_threads()
        service.search(SearchRequest(**workload["search_text"][0]))  # the first call pays one-off set-up
        results["in_process"] = {
            kind: run_in_process(calls[kind], bodies, deadline).stats() for kind, bodies in workload.items()
        }
    service.close()

    port = free_port()
    log = Path(tempfile.gettempdir()) / f"bench_service_{port}.log"
    server = start_server(bank_path, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        # Warm up and fill the telemetry ring (it holds 1,000 steps), so what follows is steady state.
        gens = workload["generate"]
        warm = [gens[i % len(gens)] for i in range(DualPathConfig().service.telemetry_records // steps + 1)]
        asyncio.run(run_http(base, "/generate", warm, clients, deadline))
        asyncio.run(run_http(base, "/search", workload["search_text"][:200], clients, deadline))

        def load(n_clients: int, share: float = 1.0) -> dict[str, Run]:
            return {
                kind: asyncio.run(
                    run_http(base, PATHS[kind], bodies[: max(1, int(len(bodies) * share))], n_clients, deadline)
                )
                for kind, bodies in workload.items()
            }

        one = load(1, share=0.25)
        results["http_1_client"] = {k: v.stats() for k, v in one.items()}
        rss = [rss_mb(server.pid)]
        rounds = []
        for _ in range(2):
            rounds.append(load(clients))
            rss.append(rss_mb(server.pid))
        results[f"http_{clients}_clients"] = {k: v.stats() for k, v in rounds[-1].items()}
        errors = [e for phase in (one, *rounds) for r in phase.values() for e in r.errors]
        results["errors"] = errors[:20]
        results["error_count"] = len(errors)
        results["rss_mb"] = {"after_warm_up": rss[0], "after_round_1": rss[1], "after_round_2": rss[2],
                             "growth_round_2_mb": rss[2] - rss[1]}
    finally:
        server.terminate()
        server.wait(30)
    results["machine"] = {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}
    return results


# -- micro-batching of /generate: the same load, batched and not, in the same run -----------------------

# (label, service settings); the first is every other row's baseline.
BATCHING = (
    ("unbatched (baseline)", {"max_batch": 1}),
    ("batched, no wait", {"max_batch": 32, "batch_wait_ms": 0.0}),
    ("batched, 5 ms wait", {"max_batch": 32, "batch_wait_ms": 5.0}),
)


def run_batching(bank_path: Path, clients: int, bodies: list[dict], time_cap: float, rounds: int = 2) -> dict:
    """POST /generate from 1 and from `clients` concurrent clients against a server started with each
    BATCHING setting in turn. The settings alternate over `rounds` rounds (so a change in the machine's
    load shows as spread, not as a difference between settings); each keeps its best round by throughput."""
    deadline = time.monotonic() + time_cap
    found: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_service_cfg_") as tmp:
        for _ in range(rounds):
            for label, settings in BATCHING:
                config = Path(tmp) / f"{len(found)}.yaml"
                config.write_text(yaml.safe_dump({"service": settings}), encoding="utf-8")
                port = free_port()
                server = start_server(bank_path, port, Path(tmp) / f"server_{port}.log", config)
                base = f"http://127.0.0.1:{port}"
                try:
                    asyncio.run(run_http(base, "/generate", bodies[: 2 * clients], clients, deadline))  # warm-up
                    one = asyncio.run(run_http(base, "/generate", bodies[: max(1, len(bodies) // 8)], 1, deadline))
                    before = batch_histogram(base)
                    many = asyncio.run(run_http(base, "/generate", bodies, clients, deadline))
                    after = batch_histogram(base)
                    batches = (after[0] - before[0], after[1] - before[1])  # the concurrent phase's batches
                finally:
                    server.terminate()
                    server.wait(30)
                row = {"settings": settings, "1_client": one.stats(), f"{clients}_clients": many.stats(),
                       "mean_batch": batches[0] / batches[1] if batches[1] else 1.0,
                       "errors": (one.errors + many.errors)[:5]}
                best = found.get(label)
                if best is None or row[f"{clients}_clients"]["per_s"] > best[f"{clients}_clients"]["per_s"]:
                    found[label] = row
    return found


def batch_histogram(base: str) -> tuple[float, float]:
    """(requests, batches) so far in the server's batch-size histogram."""
    total = count = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("dualpath_generate_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("dualpath_generate_batch_size_count"):
            count = float(line.split()[-1])
    return total, count


def batching_table(found: dict, clients: int) -> str:
    lines = [f"| /generate | mean batch at {clients} clients | clients | p50 ms | p99 ms | req/s | req/s × unbatched "
             "| p50 × unbatched | p99 × unbatched |", "|---|---|---|---|---|---|---|---|---|"]
    base = found[BATCHING[0][0]]
    for label, row in found.items():
        for key, n in (("1_client", 1), (f"{clients}_clients", clients)):
            r, b = row[key], base[key]
            capped = " (capped)" if r["capped"] else ""
            lines.append(
                f"| {label} | {row['mean_batch']:.1f} | {n}{capped} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['per_s']:.1f} | {r['per_s'] / b['per_s']:.2f} | {r['p50_ms'] / b['p50_ms']:.2f} | "
                f"{r['p99_ms'] / b['p99_ms']:.2f} |"
            )
    return "\n".join(lines)


def table(results: dict, clients: int) -> str:
    head = "| request | caller | requests | p50 ms | p99 ms | req/s | req/s × in-process | p50 × in-process |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    names = {"search_text": "/search (text)", "search_vector": "/search (vector)", "generate": "/generate"}
    for kind, endpoint in names.items():
        base = results["in_process"][kind]
        for label, key in (("in-process (baseline)", "in_process"), ("HTTP, 1 client", "http_1_client"),
                           (f"HTTP, {clients} clients", f"http_{clients}_clients")):
            r = results[key][kind]
            capped = " (capped)" if r["capped"] else ""
            lines.append(
                f"| {endpoint} | {label} | {r['requests']}{capped} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                f"{r['per_s']:.0f} | {r['per_s'] / base['per_s']:.2f} | {r['p50_ms'] / base['p50_ms']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=Path, default=None, help="a bank with trained models (default: build one)")
    parser.add_argument("--docs", type=int, default=600, help="articles in the bank built without --bank")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--search", type=int, default=3000, help="search requests per round")
    parser.add_argument("--generate", type=int, default=300, help="generate requests per round")
    parser.add_argument("--steps", type=int, default=5, help="steps per generation")
    parser.add_argument("--time-cap", type=float, default=900.0, help="seconds; no request starts after it")
    parser.add_argument("--quick", action="store_true", help="a tenth of the requests")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--batching-only", action="store_true",
                        help="only the micro-batching comparison of /generate (no search, no in-process baseline)")
    args = parser.parse_args()
    if args.quick:
        args.search, args.generate = args.search // 10, args.generate // 10

    with tempfile.TemporaryDirectory(prefix="bench_service_") as tmp:
        bank = args.bank or build_bank(Path(tmp) / "bank", args.docs)
        if args.batching_only:
            results = {}
        else:
            results = run(bank, args.clients, args.search, args.generate, args.steps, args.time_cap)
        with ConceptBank.open(bank, DualPathConfig()) as opened:
            bodies = make_workload(opened, 2, args.generate, args.steps)["generate"]
        results["batching"] = run_batching(bank, args.clients, bodies, args.time_cap)
        results["batching_machine"] = {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0]}

    print(batching_table(results["batching"], args.clients), end="\n\n")
    batching_errors = sum(len(row["errors"]) for row in results["batching"].values())
    if args.batching_only:
        print(f"errors: {batching_errors}  machine: {results['batching_machine']}")
        if args.json:
            write_json_atomic(args.json, results)
        sys.exit(1 if batching_errors else 0)

    print(table(results, args.clients), end="\n\n")
    rss = results["rss_mb"]
    print(f"server RSS: {rss['after_warm_up']:.0f} MB after warm-up, {rss['after_round_1']:.0f} MB after round 1, "
          f"{rss['after_round_2']:.0f} MB after round 2 (growth {rss['growth_round_2_mb']:+.1f} MB)")
    print(f"errors: {results['error_count']}  machine: {results['machine']}")
    if args.json:
        write_json_atomic(args.json, results)
    failed = results["error_count"] + batching_errors > 0 or rss["growth_round_2_mb"] > RSS_GROWTH_LIMIT_MB
    if failed:
        print(f"FAILED: errors {results['error_count']}, RSS growth {rss['growth_round_2_mb']:+.1f} MB "
              f"(limit {RSS_GROWTH_LIMIT_MB} MB)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
