"""The one configuration object. Loaded from YAML, validated by pydantic, passed down whole.

Each part reads its own section (`cfg.lvm`, `cfg.tower`, ...). Every field has a default, so an
empty YAML file (or none) is a valid configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dualpath.errors import ConfigError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# auto | cpu | cuda | cuda:N (runtime.resolve_device turns auto into cuda where torch sees a GPU)
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EncoderConfig(_Section):
    name: str = DEFAULT_ENCODER  # a known name or a local sentence-transformers model path
    batch_size: int = Field(64, ge=1)
    # None: the top-level `device`; set it to run the encoder elsewhere than the models.
    device: str | None = Field(None, pattern=DEVICE_PATTERN)
    max_seq_length: int | None = None
    # Worker processes `bank build` / `bank add` encode in, each with its own copy of the model and cores/processes
    # torch threads. auto: one per core (at most 4) on the CPU once a build passes 16,384 concepts, one on a GPU;
    # measured on 2 cores: docs/scaling.md.
    processes: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"


class SegmentConfig(_Section):
    min_chars: int = Field(25, ge=1)  # shorter sentences are merged into a neighbour
    max_chars: int = Field(400, ge=20)  # longer ones are split at clause boundaries


class BankConfig(_Section):
    index: str = "auto"  # auto | flat | ivf | hnsw | any FAISS factory string
    dtype: Literal["float16", "float32"] = "float16"
    backend: Literal["faiss", "milvus"] = "faiss"
    milvus_uri: str | None = None
    nprobe: int = Field(16, ge=1)
    ef_search: int = Field(128, ge=1)
    # The share of the exact top-k an approximate index (IVF, HNSW) must return at each search depth: its
    # nprobe / efSearch per depth are measured to it when the index is built or grown (bank/tuning.py).
    # null: search with nprobe and ef_search as given, at every depth.
    recall: float | None = Field(0.95, gt=0, le=1)
    # Concepts encoded per step of `bank build` / `bank add`: one encoder call, one metadata insert, and (build)
    # one resume checkpoint. Memory does not grow with the corpus: vectors go to disk batch by batch.
    build_batch: int | None = Field(None, ge=1)  # None: bank.bank.BUILD_BATCH (1024)


# Results per query in a bank search: a search allocates (queries × k) ids and scores up front, so
# k = 1e9 ran for minutes and exhausted memory before FAISS returned anything.
MAX_SEARCH_K = 10_000


class SplitConfig(_Section):
    heldout_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = 0
    # C: previous concepts per pair. Bounded because every pair holds C ids and every batch C vectors:
    # --context 100000 ran out of memory deep in training instead of failing here.
    context: int = Field(5, ge=1, le=1024)


class LVMConfig(_Section):
    # Defaults measured on the wiki sample (docs/lvm.md): the best held-out result in ~1-2 CPU minutes.
    arch: Literal["gru", "lstm", "transformer"] = "gru"
    hidden: int = Field(256, ge=8)
    layers: int = Field(1, ge=1)
    heads: int = Field(4, ge=1)  # transformer only
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    residual: Literal["none", "last", "mean"] = "mean"  # predict a correction to this context vector
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(2e-3, gt=0)
    schedule: Literal["constant", "cosine"] = "cosine"  # learning rate over the run
    weight_decay: float = Field(0.01, ge=0)
    cosine_weight: float = Field(1.0, ge=0)
    infonce_weight: float = Field(0.1, ge=0)  # in-batch InfoNCE: trades mean cos for Hit@K
    temperature: float = Field(0.05, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    # Rollout training: also predict the `rollout_steps` concepts after the target from a context that
    # ends in the model's own predictions (gradients flow through them), so that fed its own outputs
    # it moves on instead of settling on a fixed point. Weight of each extra step's loss: rollout_weight.
    rollout_steps: int = Field(2, ge=0, le=8)  # 2: measured best on both corpora (docs/lvm.md)
    rollout_weight: float = Field(0.5, ge=0)
    threads: int = Field(0, ge=0)  # torch intra-op threads while training; 0 = half the cores
    watchdog_seconds: float = Field(300.0, gt=0)
    seed: int = 0


class SamplerConfig(_Section):
    # The LVM's sampler (models/sampler.py): a flow-matching head that draws the next vector around the
    # LVM's mean, so free-running streams move as documents do instead of settling on a fixed point.
    # Trained after the LVM by `dualpath train lvm` (epochs 0: none). Measured in docs/lvm.md.
    # 384 x 2 fits as well as 768 x 3 (held-out loss 1.563 vs 1.558 on python-docs) at a third of the
    # cost of a draw: one stream's draw is memory-bound on the weights (docs/lvm.md).
    hidden: int = Field(384, ge=8)
    layers: int = Field(2, ge=1)
    ode_steps: int = Field(8, ge=1, le=256)  # Euler steps from noise to a draw (8 ≈ 16: docs/lvm.md)
    epochs: int = Field(20, ge=0)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    threads: int = Field(0, ge=0)  # torch intra-op threads while training; 0 = half the cores
    watchdog_seconds: float = Field(300.0, gt=0)
    seed: int = 0


DOC_TOWER_REFUSAL = (
    "--doc-tower mlp is not supported: the bank index and the decider use the encoder's vectors, "
    "so only the query side may learn (see docs/retriever.md)"
)


class TowerConfig(_Section):
    tower: Literal["gru", "bigru", "lstm", "mlp", "attn"] = "gru"
    hidden: int = Field(256, ge=8)  # 512 trains 2x slower for the same held-out numbers (docs/retriever.md)
    layers: int = Field(2, ge=1)  # attn tower only
    heads: int = Field(4, ge=1)  # attn tower only
    residual: Literal["none", "last", "mean"] = "mean"
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(256, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    temperature: float = Field(0.05, gt=0)
    grad_clip: float = Field(1.0, gt=0)  # max gradient norm per step
    context_dropout: float = Field(0.0, ge=0.0, le=1.0)  # share of pairs whose context is cut shorter per step
    queue_size: int = Field(4096, ge=0)  # memory queue of recent targets as extra negatives
    document_negatives: int = Field(0, ge=0)  # other concepts of the pair's own document as negatives
    hard_negatives: bool = True
    # Every bank concept is a negative (the exact softmax over the bank, false negatives masked):
    # the ranking evaluation measures, optimised directly. Supersedes the queue and mining; small banks only.
    bank_negatives: bool = False
    hard_per_query: int = Field(4, ge=1)
    refresh_every: int = Field(1, ge=1)  # epochs between re-mining (ANCE-style)
    warmup_epochs: int = Field(1, ge=0)  # in-batch only before the first mining
    mine_depth: int = Field(100, ge=1)  # top-k searched per query when mining
    band: tuple[float, float] = (0.3, 0.9)  # cosine of query to negative must fall in [lo, hi]
    near_dup: float = Field(0.95, gt=0, le=1)  # cosine to the positive above which a hit is a duplicate
    exclude_same_document: bool = True  # other concepts of the positive's document are no negatives
    mine_sample: Literal["top", "random"] = "random"  # uniform among the survivors, or the hardest first
    miner: Literal["sync", "threaded"] = "sync"  # threaded: each mining search gets a deadline
    mine_exact_mb: float = Field(1024.0, ge=0)  # mine on an exact float32 copy of the bank up to this size
    mine_timeout_s: float = Field(120.0, gt=0)  # deadline of one mining search (threaded miner)
    # Caps for banks of a million concepts, where mining and evaluating every pair search the whole bank for each:
    # mine a fresh random sample of this many training pairs per round (the others train on in-batch and queue
    # negatives that round); evaluate each epoch (and the heuristic rows) on a fixed sample of this many held-out
    # pairs. None: every pair (the results on small banks do not change).
    mine_pairs: int | None = Field(None, ge=1)
    eval_pairs: int | None = Field(None, ge=1)
    threads: int = Field(0, ge=0)  # torch intra-op threads while training; 0 = half the cores
    watchdog_seconds: float = Field(300.0, gt=0)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _identity_document_tower(cls, data: Any) -> Any:
        # The document tower is always the identity; configs and checkpoints that still say so load.
        if isinstance(data, dict) and "doc_tower" in data:
            data = dict(data)
            if data.pop("doc_tower") != "identity":
                raise ValueError(DOC_TOWER_REFUSAL)
        return data

    @field_validator("band")
    @classmethod
    def _band_is_an_interval(cls, band: tuple[float, float]) -> tuple[float, float]:
        if not -1.0 <= band[0] < band[1] <= 1.0:
            raise ValueError(f"band must satisfy -1 <= lo < hi <= 1, got {list(band)}")
        return band


class DeciderConfig(_Section):
    lanes_file: Path | None = None  # user lanes, merged over the shipped lanes.yaml
    default_lane: str = "neutral"
    schedule: str = "continuous"  # continuous | reference
    dup_threshold: float = Field(0.98, gt=-1, le=1)  # near-duplicate cosine; the window is per lane
    memory_cap: int = Field(64, ge=1)  # steps of picked ids a decoder remembers
    retrieval_timeout_s: float = Field(0.5, gt=0)


class GenerationConfig(_Section):
    steps: int = Field(5, ge=1)
    max_steps: int = Field(64, ge=1)
    # Sampling over the shortlist (as in text generation): temperature 0 = greedy, the best candidate.
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    top_k: int = Field(0, ge=0)  # 0 = every candidate of the shortlist
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = Field(0, ge=0)  # the same seed, prompt and settings repeat a run exactly
    # The longest prompt `dualpath generate` takes (characters); a longer one is refused in one line.
    max_prompt_chars: int = Field(200_000, ge=1, le=100_000_000)
    # The LVM's sampler (when the bank has one): 0 = the LVM's mean vector, 1 = a draw from the spread
    # the sampler learned; values between narrow the draw. 0.25: the text closest to the documents' own
    # continuations on both benchmark corpora (docs/lvm.md).
    lvm_temperature: float = Field(0.25, ge=0.0, le=2.0)
    # Euler steps of each draw (the sampler trains on continuous flow time, so any count integrates the
    # same flow). At temperature 0.25 a 4-step draw is at cosine 0.9998 to a 32-step one, at 0.6x the cost
    # of 8 steps; at temperature 1, 8 steps keep 0.9998 (docs/lvm.md).
    sampler_steps: int = Field(4, ge=1, le=256)
    # What each step feeds back to the LVM: "output" = the decided vector (SNAP: the bank concept, NOVEL:
    # v̂, BLEND: the mix), so lanes lead to different continuations; "rendered" = the concept the reader is
    # shown, which makes every lane's text the same (docs/generation.md has the measurements).
    # "novel-rendered" = the decided vector for SNAP and BLEND, the rendered concept for NOVEL steps.
    feedback: Literal["output", "rendered", "novel-rendered"] = "output"
    # A candidate this close (cosine) to a concept the stream has shown, or to the prompt, says that
    # concept again in other words, and is not shown either. `dualpath calibrate` sets it per bank from
    # how often the bank's own documents restate an earlier sentence (a value set here wins); 1.0 blocks
    # exact repeats only.
    paraphrase_cosine: float = Field(0.80, gt=0.0, le=1.0)
    # A prompt sentence's nearest bank concept at this cosine or closer is the bank's own version of it
    # (typed in other words, a bank sentence finds its original there), so it counts as said: it is never
    # shown or snapped to. From 0.70 up the nearest concept of a restated sentence is its original in most
    # cases on both benchmark corpora; below, on python-docs, mostly a lookalike (docs/generation.md). 1.0: off.
    prompt_anchor_cosine: float = Field(0.70, gt=0.0, le=1.0)
    # Per-stream model state: the LVM and the tower read one new concept per step (models/incremental.py);
    # False re-reads every stream's whole window each step (the reference path; the same outputs).
    incremental: bool = True


# The most text one request field may hold whatever service.max_prompt_chars says (the request schemas' bound).
MAX_SERVICE_TEXT = 1_000_000


class ServiceConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: str | None = None  # None: no key; an empty or whitespace-only key is refused (see below)
    max_prompt_chars: int = Field(4000, ge=1, le=MAX_SERVICE_TEXT)
    max_k: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)  # larger request bodies get 413
    # Seconds a request's whole body may take to arrive (408 after that), and an idle connection is kept
    # open: before its first request, and between requests (keep-alive).
    body_timeout_s: float = Field(10.0, gt=0.0, le=3600.0)
    idle_timeout_s: float = Field(5.0, gt=0.0, le=3600.0)
    generation_workers: int = Field(2, ge=1)  # generations computed at once; more wait their turn
    search_workers: int = Field(4, ge=1)  # searches computed at once
    telemetry_records: int = Field(1000, ge=1)  # recent steps kept for /telemetry and the dashboard
    threads_per_request: int = Field(1, ge=1)  # torch and FAISS threads of one request (requests run in parallel)
    # Micro-batching of POST /generate (docs/service.md): requests that arrive together run as one
    # Generator.generate_batch call. A batch takes every request that is waiting when a generation worker
    # frees up, and waits up to batch_wait_ms after its first request for more; max_batch 1 turns it off.
    batch_wait_ms: float = Field(0.0, ge=0.0, le=1000.0)
    max_batch: int = Field(32, ge=1, le=1024)

    @field_validator("api_key")
    @classmethod
    def _real_key(cls, value: str | None) -> str | None:
        # DUALPATH_API_KEY=" " used to count as a key, and the server then bound publicly behind it.
        if value is not None and not value.strip():
            raise ValueError("the API key is empty or only whitespace; set a real key or none")
        return value


class DualPathConfig(_Section):
    # Where encoding, LVM and tower training and generation run: auto = CUDA when torch sees a GPU, else the CPU.
    # Checkpoints never record it (weights are saved from and loaded to the CPU, then moved).
    device: str = Field("auto", pattern=DEVICE_PATTERN)
    encoder: EncoderConfig = EncoderConfig()
    segment: SegmentConfig = SegmentConfig()
    bank: BankConfig = BankConfig()
    split: SplitConfig = SplitConfig()
    lvm: LVMConfig = LVMConfig()
    sampler: SamplerConfig = SamplerConfig()
    tower: TowerConfig = TowerConfig()
    decider: DeciderConfig = DeciderConfig()
    generation: GenerationConfig = GenerationConfig()
    service: ServiceConfig = ServiceConfig()

    @classmethod
    def from_yaml(cls, path: str | Path | None) -> DualPathConfig:
        """Load a config file; `None` gives the defaults. Errors name the file and the field."""
        if path is None:
            return cls()
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory, not a YAML file") from None
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> DualPathConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{source}: {field}: {first['msg']}") from None

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")
