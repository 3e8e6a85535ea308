"""What a run was measured on: cores, CPU model, memory, library versions, thread settings, load.

Numbers from a 2-core machine shared with other work are not numbers from an idle 32-core server;
machine.md says which one produced a table, and the load average says how busy it was.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

LIBRARIES = ("numpy", "numba", "faiss-cpu", "torch", "sentence-transformers", "transformers", "pymilvus", "dualpath")


def describe_machine() -> dict[str, Any]:
    """A JSON-ready description of this machine and process (call at the start and end of a run)."""
    memory = psutil.virtual_memory()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(memory.total / 2**30, 1),
        "ram_available_gib": round(memory.available / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "threads": thread_settings(),
    }


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def thread_settings() -> dict[str, Any]:
    """Threads each numeric library will use: torch intra-op, FAISS's OpenMP team, and every BLAS/OpenMP pool."""
    import faiss
    import torch

    out: dict[str, Any] = {
        "torch_intra_op": torch.get_num_threads(),
        "faiss_omp": faiss.omp_get_max_threads(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
                if k in os.environ},
    }
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # optional: comes with scikit-learn, which sentence-transformers pulls in
        return out
    out["pools"] = [
        {"api": p.get("internal_api"), "threads": p.get("num_threads"), "library": Path(p.get("filepath", "")).name}
        for p in threadpool_info()
    ]
    return out


def machine_markdown(start: dict[str, Any], end: dict[str, Any], seconds: float, quick: bool) -> str:
    """machine.md: the description, with the load average at the start and the end of the run."""
    libs = ", ".join(f"{name} {version}" for name, version in start["libraries"].items() if version)
    threads = start["threads"]
    pools = "; ".join(f"{p['api']} ({p['library']}) {p['threads']}" for p in threads.get("pools", [])) or "unknown"
    lines = [
        "# Machine",
        "",
        f"- run: `dualpath bench{' --quick' if quick else ''}`, started {start['date']}, took {seconds:.0f} s",
        f"- CPU: {start['cpu_model']}, {start['logical_cores']} logical cores "
        f"({start['physical_cores']} physical, {start['usable_cores']} usable by this process)",
        f"- RAM: {start['ram_gib']} GiB ({start['ram_available_gib']} GiB available at the start)",
        f"- load average (1, 5, 15 min): {_load(start)} at the start, {_load(end)} at the end",
        f"- OS: {start['os']}; Python {start['python']}",
        f"- libraries: {libs}",
        f"- threads: torch intra-op {threads['torch_intra_op']}, FAISS OpenMP {threads['faiss_omp']}; "
        f"BLAS/OpenMP pools: {pools}"
        + (f"; environment {threads['env']}" if threads["env"] else ""),
        "",
    ]
    return "\n".join(lines)


def _load(info: dict[str, Any]) -> str:
    return " / ".join(f"{x:.2f}" for x in info["load_average"])


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
