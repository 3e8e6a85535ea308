"""The LVM's sampler: draws the next vector instead of predicting the mean of the plausible ones.

The LVM is a regressor: trained on cosine it predicts the conditional mean μ of the next concept,
which is close to the document's topic and hardly changes from one step to the next. Fed its own
outputs it settles on a fixed point (successive outputs at cosine 0.99, against 0.44 between a
document's own consecutive sentences). A sampler draws from the spread around μ instead:

    y = μ + scale · z,     z ~ p(z | μ, last)

where `last` is the newest context concept and `scale` the RMS of the training residuals y - μ. The
distribution of z is learned by flow matching (Lipman et al. 2023; the Large Concept Model samples
its next sentence vector with a diffusion head for the same reason): a small MLP learns the velocity
that carries Gaussian noise z₀ to a residual z₁ along the straight line x_t = (1 - t) z₀ + t z₁, and
sampling integrates it from t = 0 to 1 in `ode_steps` Euler steps (8 by default: on both benchmark
corpora a draw in 8 steps is at cosine 0.9998 to the same draw in 16, at half the cost).

The noise comes from the caller (one `(d,)` row per stream), so a seeded stream repeats exactly, and
`temperature` scales it: 0 gives μ itself, which is the LVM without the sampler.

`LVMSampler` wraps the net with the config that rebuilds it; it records a digest of the LVM it was
trained on, since a sampler only fits the μ of that LVM.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualpath.config import SamplerConfig
from dualpath.errors import CheckpointError, ModelInputError
from dualpath.models.checkpoint import BEST, LAST, load_model_config, load_weights, save_checkpoint
from dualpath.models.heuristics import normalize_rows

log = logging.getLogger(__name__)

KIND = "lvm-sampler"
SAMPLER_DIR = "sampler"  # inside the LVM's training output: a sampler belongs to one LVM
ARCH_FIELDS = ("hidden", "layers", "ode_steps")
TIME_FEATURES = 16  # sinusoidal features of the flow time t, each as sin and cos


class FlowNet(nn.Module):
    """The velocity field v(x_t, t | μ, last): an MLP over the noisy residual, its time and the condition."""

    def __init__(self, dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.exp(torch.linspace(0.0, 6.0, TIME_FEATURES)), persistent=False)
        width = 3 * dim + 2 * TIME_FEATURES
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, mean: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, mean, last, self._time(t)], dim=1))

    def _time(self, t: torch.Tensor) -> torch.Tensor:
        angle = t[:, None] * self.frequencies[None]
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)

    def integrate(self, x: torch.Tensor, mean: torch.Tensor, last: torch.Tensor, steps: int) -> torch.Tensor:
        """Euler steps from t = 0 to 1: what `steps` calls of `forward` give, with the first layer's
        condition and time terms computed once (they do not change along a path, or across rows)."""
        first, rest = self.net[0], self.net[1:]
        dim = x.shape[1]
        weight_x, weight_cond, weight_time = first.weight.split([dim, 2 * dim, 2 * TIME_FEATURES], dim=1)
        cond = torch.cat([mean, last], dim=1) @ weight_cond.T + first.bias
        times = torch.arange(steps, dtype=x.dtype, device=x.device) / steps
        time_terms = self._time(times) @ weight_time.T  # (steps, hidden)
        for j in range(steps):
            x = x + rest(x @ weight_x.T + cond + time_terms[j]) / steps
        return x


class FlowViews:
    """A FlowNet's CPU float32 parameters as numpy views, taken once: no copy, so an optimiser's in-place
    updates are seen (the sampler's training draws through them), and `current` tells when the net's
    storage moved (`.to()`, a dtype change) and the views must be taken again. A draw read them through
    ~13 torch calls otherwise, more than a small draw's products."""

    def __init__(self, net: FlowNet, dim: int) -> None:
        first, rest = net.net[0], list(net.net)[1:]
        if not isinstance(first, nn.Linear) or any(not isinstance(m, (nn.Linear, nn.SiLU)) for m in rest):
            raise TypeError("integrate_numpy runs Linear and SiLU layers only")
        self._first, self._weight, self._at = first, first.weight, first.weight.data_ptr()
        weight = first.weight.detach().numpy()
        self.weight_x, self.weight_cond = weight[:, :dim], weight[:, dim : 3 * dim]
        self.weight_time = weight[:, 3 * dim :]
        self.bias = first.bias.detach().numpy()
        self.frequencies = net.frequencies.numpy()
        self.layers = [(m.weight.detach().numpy().T, m.bias.detach().numpy()) if isinstance(m, nn.Linear) else None
                       for m in rest]

    def current(self) -> bool:
        """The views still read the net's parameters (the same tensor, in the same storage)."""
        return self._first.weight is self._weight and self._weight.data_ptr() == self._at


def integrate_numpy(
    net: FlowNet, x: np.ndarray, mean: np.ndarray, last: np.ndarray, steps: int, views: FlowViews | None = None
) -> np.ndarray:
    """`FlowNet.integrate` on the CPU in numpy (eval mode): the same Euler steps, within float tolerance.

    A draw is 8 steps of three small products each; torch's per-call cost (~5-10 µs a call, ~10 calls
    a step) was more than the products. Here each product is one BLAS call on the weights in place
    (`views`, the net's parameters as numpy views; taken here when not given)."""
    views = FlowViews(net, x.shape[1]) if views is None else views
    cond = np.concatenate([mean, last], axis=1) @ views.weight_cond.T + views.bias
    angle = (np.arange(steps, dtype=np.float32) / np.float32(steps))[:, None] * views.frequencies[None]
    time_terms = np.concatenate([np.sin(angle), np.cos(angle)], axis=1) @ views.weight_time.T  # (steps, hidden)
    offsets = cond[:, None, :] + time_terms[None]  # (b, steps, hidden): the first layer's bias of each step
    x = np.array(x, dtype=np.float32)
    inv = np.float32(1.0 / steps)
    weight_x = views.weight_x.T
    for j in range(steps):
        h = x @ weight_x
        h += offsets[:, j]
        for layer in views.layers:
            if layer is None:  # SiLU: h σ(h), σ in its tanh form (no overflow), in place
                gate = h * np.float32(0.5)
                np.tanh(gate, out=gate)
                gate *= np.float32(0.5)
                gate += np.float32(0.5)
                h *= gate
            else:
                h = h @ layer[0]
                h += layer[1]
        h *= inv
        x += h
    return x


def flow_matching_loss(
    net: FlowNet, residual: torch.Tensor, mean: torch.Tensor, last: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """Mean squared error of the predicted velocity against z₁ - z₀ at x_t (residuals in `scale` units)."""
    x_t = (1 - t[:, None]) * noise + t[:, None] * residual
    return ((net(x_t, t, mean, last) - (residual - noise)) ** 2).mean()


def sampler_dir(lvm_out: str | Path) -> Path:
    """Where the sampler of the LVM trained into `lvm_out` lives."""
    return Path(lvm_out) / SAMPLER_DIR


def weights_digest(net: nn.Module) -> str:
    """A short digest of a model's weights: which LVM a sampler was trained for."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LVMSampler:
    """A trained (or freshly built) sampler with the config that rebuilds it.

    `config`: kind, dim, encoder, hidden, layers, ode_steps, scale (the residual RMS per dimension)
    and lvm_digest (the LVM whose μ it was trained on).
    """

    def __init__(self, net: FlowNet, config: dict[str, Any]) -> None:
        self.net = net
        self.config = config
        self._views: FlowViews | None = None  # the CPU draw's numpy views of the net (FlowViews)

    @classmethod
    def build(cls, dim: int, cfg: SamplerConfig, scale: float, encoder_name: str, lvm_digest: str) -> LVMSampler:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"the residual scale must be positive, got {scale}")
        config = {
            "kind": KIND,
            "dim": int(dim),
            "encoder": encoder_name,
            "scale": float(scale),
            "lvm_digest": lvm_digest,
            **{name: getattr(cfg, name) for name in ARCH_FIELDS},
        }
        return cls(FlowNet(dim, cfg.hidden, cfg.layers), config)

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def scale(self) -> float:
        return float(self.config["scale"])

    @property
    def lvm_digest(self) -> str:
        return str(self.config["lvm_digest"])

    def sample(
        self, mean: np.ndarray, last: np.ndarray, noise: np.ndarray, temperature: float = 1.0, steps: int | None = None
    ) -> np.ndarray:
        """Unit-norm draws `(b, d)` around the LVM's means `(b, d)`, given the newest context concepts
        `(b, d)` and standard normal noise `(b, d)`; temperature 0 returns the means. `steps`: Euler steps
        of the draw (default: the checkpoint's `ode_steps`)."""
        mean = np.asarray(mean, dtype=np.float32)
        for name, array in (("last", last), ("noise", noise)):
            if np.shape(array) != mean.shape or mean.ndim != 2 or mean.shape[1] != self.dim:
                raise ModelInputError(
                    f"the sampler expects means, last concepts and noise of shape (b, {self.dim}); "
                    f"got {mean.shape} and {name} {np.shape(array)}"
                )
        if temperature == 0 or len(mean) == 0:
            return mean.copy()
        steps = int(self.config["ode_steps"]) if steps is None else int(steps)
        if steps < 1:
            raise ModelInputError(f"the sampler needs at least one Euler step, got {steps}")
        # Switching modes walks every submodule (~50 µs each way, a quarter of a draw): only when training.
        was_training = self.net.training
        if was_training:
            self.net.eval()
        views = self._views
        if views is None or not views.current():
            on_cpu = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in self.net.parameters())
            views = self._views = FlowViews(self.net, self.dim) if on_cpu else None
        try:
            if views is not None:
                start = np.float32(temperature) * np.asarray(noise, dtype=np.float32)
                z = integrate_numpy(self.net, start, mean, np.asarray(last, dtype=np.float32), steps, views)
                out = mean + np.float32(self.scale) * z
                return normalize_rows(out)
            return self._sample_torch(mean, last, noise, temperature, steps)
        finally:
            if was_training:
                self.net.train()

    @torch.no_grad()
    def _sample_torch(
        self, mean: np.ndarray, last: np.ndarray, noise: np.ndarray, temperature: float, steps: int
    ) -> np.ndarray:
        """`sample` through torch, on the net's device (a GPU, or parameters numpy cannot view)."""
        device = next(self.net.parameters()).device
        mu = torch.from_numpy(mean).to(device)
        previous = torch.from_numpy(np.asarray(last, dtype=np.float32)).to(device)
        x = float(temperature) * torch.from_numpy(np.asarray(noise, dtype=np.float32)).to(device)
        x = self.net.integrate(x, mu, previous, steps)
        return F.normalize(mu + self.scale * x, dim=-1).cpu().numpy()

    def save(self, directory: str | Path) -> Path:
        return save_checkpoint(directory, self.net, self.config)

    @classmethod
    def load(
        cls,
        path: str | Path,
        expected_dim: int | None = None,
        expected_encoder: str | None = None,
        device: str = "cpu",
    ) -> LVMSampler:
        """Load from a checkpoint directory or a training output (its best/, else last/), onto `device`."""
        directory, config = load_model_config(path, KIND, "an LVM sampler", expected_dim, expected_encoder)
        try:
            net = FlowNet(int(config["dim"]), int(config["hidden"]), int(config["layers"]))
            config = {**config, "ode_steps": int(config["ode_steps"]), "scale": float(config["scale"]),
                      "lvm_digest": str(config["lvm_digest"])}
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"LVM sampler config in {directory} is incomplete or invalid: {err}") from None
        load_weights(directory, net)
        net.to(device).eval()
        log.info("loaded the LVM sampler (%s ODE steps) from %s", config["ode_steps"], directory)
        return cls(net, config)


def load_lvm_sampler(lvm_out: str | Path, lvm_net: nn.Module, dim: int, encoder: str, device: str) -> LVMSampler | None:
    """The sampler trained for this LVM (`lvm_out/sampler`), or None when there is none or it fits another.

    A sampler trained for another LVM would draw around the wrong mean: it is left out with a warning
    (retraining the LVM retrains its sampler).
    """
    lvm_out = Path(lvm_out)
    # Given a checkpoint of the training output (its best/ or last/), the sampler is beside it.
    path = sampler_dir(lvm_out.parent if lvm_out.name in (BEST, LAST) else lvm_out)
    if not path.is_dir():
        log.info("no LVM sampler at %s: each step's vector is the LVM's mean", path)
        return None
    sampler = LVMSampler.load(path, dim, encoder, device)
    if sampler.lvm_digest != weights_digest(lvm_net):
        log.warning(
            "the LVM sampler at %s was trained for another LVM: not used (retrain with `dualpath train lvm`)", path
        )
        return None
    return sampler
