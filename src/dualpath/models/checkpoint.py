"""Checkpoints as a directory of safetensors + JSON, written atomically. Nothing is ever unpickled.

Layout of one checkpoint directory:
    model.safetensors      the model's state_dict
    config.json            what rebuilds the model and what it is for (arch, dim, encoder, epoch, metrics)
    optimizer.safetensors  the optimizer's tensors (resumable checkpoints only)
    optimizer.json         the optimizer's non-tensor state: param_groups, step counters
    rng.json               Python, NumPy and torch RNG states, so a resumed run continues exactly
    checksums.json         size and SHA-256 of model.safetensors, checked before the weights are loaded
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dualpath.errors import CheckpointError
from dualpath.fileio import atomic_directory, json_default

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIM_TENSORS = "optimizer.safetensors"
OPTIM_STATE = "optimizer.json"
RNG_FILE = "rng.json"
CHECKSUM_FILE = "checksums.json"
_HASH_BLOCK = 1 << 22

log = logging.getLogger(__name__)
# A training output holds two checkpoints: last/ (resumable, every epoch) and best/ (by held-out metric).
LAST = "last"
BEST = "best"


def model_dir(path: str | Path) -> Path:
    """The directory holding the weights to use from a training output: best/, else last/, else itself."""
    path = Path(path)
    for candidate in (path / BEST, path / LAST, path):
        if (candidate / MODEL_FILE).is_file():
            return candidate
    raise CheckpointError(f"no trained model in {path}")


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    config: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    with_rng: bool = False,
) -> Path:
    """Write a checkpoint directory atomically: readers see the old checkpoint or the new one."""
    directory = Path(directory)
    # The swap replaces the whole directory: only ever a checkpoint (a training output's last/ or best/).
    if directory.exists() and not (directory / CONFIG_FILE).is_file() and (
        not directory.is_dir() or any(directory.iterdir())
    ):
        raise CheckpointError(f"refusing to write a checkpoint to {directory}: it exists and is not a checkpoint")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(directory) as tmp:
        save_file(state, str(tmp / MODEL_FILE))
        (tmp / CHECKSUM_FILE).write_text(json.dumps({MODEL_FILE: file_checksum(tmp / MODEL_FILE)}, indent=2) + "\n")
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=json_default) + "\n")
        if optimizer is not None:
            tensors, rest = _split_optimizer_state(optimizer.state_dict())
            save_file(tensors, str(tmp / OPTIM_TENSORS))
            (tmp / OPTIM_STATE).write_text(json.dumps(rest, default=json_default))
        if with_rng:
            (tmp / RNG_FILE).write_text(json.dumps(capture_rng_state()))
    return directory


def load_model_config(
    path: str | Path,
    kind: str,
    what: str,
    expected_dim: int | None = None,
    expected_encoder: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint directory and config of a `kind` model, refused if it was trained for another space.

    `path` is a checkpoint or a training output (its best/, else last/). `expected_dim` /
    `expected_encoder` are the bank's: a model trained on another embedding space is refused with one
    clear line instead of producing meaningless vectors. A checkpoint that names no encoder cannot be
    compared, so only its dimension is checked.
    """
    directory = model_dir(path)
    config = read_config(directory)
    if config.get("kind") != kind:
        raise CheckpointError(f"{directory} holds a {config.get('kind', 'unknown')!r} model, not {what}")
    try:
        saved_dim = int(config["dim"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{what} config in {directory} is invalid: no dimension") from None
    if expected_dim is not None and saved_dim != int(expected_dim):
        raise CheckpointError(
            f"{what} at {directory} was trained on {saved_dim}-d vectors but the bank holds {expected_dim}-d ones"
        )
    saved_encoder = config.get("encoder")
    if expected_encoder is not None and saved_encoder and saved_encoder != expected_encoder:
        raise CheckpointError(
            f"{what} at {directory} was trained on encoder {saved_encoder!r}, the bank uses {expected_encoder!r}"
        )
    return directory, config


def read_config(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {directory} (missing {CONFIG_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint config {path} is corrupt: {err}") from None


def load_weights(directory: str | Path, model: torch.nn.Module) -> None:
    """Load `model.safetensors` into `model`, strictly: a missing or extra tensor is an error."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} has no {MODEL_FILE}")
    verify_weights(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint weights {path} are corrupt: {err}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {directory} does not fit the model: {first}") from None


def file_checksum(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    return {"size": path.stat().st_size, "sha256": digest.hexdigest()}


def verify_weights(path: Path) -> None:
    """Refuse weights whose size or SHA-256 differs from the checkpoint's checksums.json, naming the file.

    A checkpoint written before checksums were recorded has none: it is loaded as it is.
    """
    listed = path.parent / CHECKSUM_FILE
    if not listed.is_file():
        log.debug("%s has no %s: its weights are loaded unchecked", path.parent, CHECKSUM_FILE)
        return
    try:
        expected = json.loads(listed.read_text(encoding="utf-8"))[path.name]
        size, sha256 = int(expected["size"]), str(expected["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint checksums {listed} are corrupt: {err!r}") from None
    actual = file_checksum(path)
    if actual["size"] != size or actual["sha256"] != sha256:
        raise CheckpointError(
            f"checkpoint weights {path} are corrupt: their checksum does not match {CHECKSUM_FILE} "
            f"({actual['size']} bytes, {size} recorded; restore the file or retrain)"
        )


def load_training_state(directory: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore the optimizer and the RNG states written by `save_checkpoint(..., with_rng=True)`."""
    directory = Path(directory)
    try:
        tensors = load_file(str(directory / OPTIM_TENSORS))
        rest = json.loads((directory / OPTIM_STATE).read_text())
        rng = json.loads((directory / RNG_FILE).read_text())
    except (FileNotFoundError, SafetensorError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint {directory} cannot resume training: {err}") from None
    optimizer.load_state_dict(_join_optimizer_state(tensors, rest))
    restore_rng_state(rng)


def capture_rng_state() -> dict[str, Any]:
    py_state = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    # Tensors go to safetensors under "state.<param>.<name>"; everything else is JSON.
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for param_id, slots in state["state"].items():
        plain: dict[str, Any] = {}
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().cpu().contiguous()
            else:
                plain[name] = value
        rest["state"][str(param_id)] = plain
    return tensors, rest


def _join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in rest["state"].items()}
    for key, value in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = value
    # JSON turned tuples (Adam's betas) into lists; give them back their shape.
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in group.items()}
        for group in rest["param_groups"]
    ]
    return {"state": state, "param_groups": groups}
