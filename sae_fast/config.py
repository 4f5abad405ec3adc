"""SAE configuration: a dataclass with validation and a JSON round trip."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from . import architectures
from .errors import ConfigError
from .input_norm import check_steps
from .validate import check_int, train_field

BACKENDS = ("auto", "triton", "native", "torch")
PARALLEL = ("none", "data", "features")  # training parallelism (sae_fast.training.distributed)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
}


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    """`"float32"`, `"torch.bfloat16"` or a `torch.dtype` -> `torch.dtype` (floating only)."""
    if isinstance(name, torch.dtype):
        if not name.is_floating_point:
            raise ConfigError(f"dtype must be a floating dtype, got {name}")
        return name
    if not isinstance(name, str):
        raise ConfigError(f"dtype must be a string or torch.dtype, got {type(name).__name__}")
    key = name.removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; expected one of {sorted(set(_DTYPES))}")
    return _DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.float32` -> `"float32"`."""
    return str(dtype).removeprefix("torch.")


@dataclass
class SAEConfig:
    """Architecture of one SAE plus where its activations came from (metadata)."""

    d_in: int
    d_sae: int
    activation: str = "topk"
    k: int | None = 32
    dtype: str = "float32"
    model_name: str | None = None
    hook_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # architecture-specific settings, validated by the architecture (matryoshka_widths, ...)
    options: dict[str, Any] = field(default_factory=dict)
    # Transcoders (docs/design.md section 4.2): the input is read at `hook_name`, the
    # target at `target_hook_name`; b_dec [d_out] is the output bias only (it does not
    # centre the input); `skip` adds `x @ W_skip.T` (W_skip [d_out, d_in]) to the output.
    transcoder: bool = False
    d_out: int | None = None  # None: d_in
    skip: bool = False
    target_hook_name: str | None = None
    # runtime input normalisation steps (sae_fast.input_norm): SAELens's
    # constant_norm_rescale / layer_norm, TransformerLens's centring ("center")
    input_norm: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field that is wrong."""
        check_int("d_in", self.d_in, 1)
        check_int("d_sae", self.d_sae, 1)
        if not isinstance(self.options, dict):
            raise ConfigError(f"options must be an object, got {type(self.options).__name__}")
        arch = architectures.get(self.activation)
        self.activation = arch.name  # a SAELens name or alias becomes ours
        self._validate_transcoder()
        arch.validate(self)
        self.input_norm = check_steps(self.input_norm)
        if self.transcoder and "center" in self.input_norm:
            raise ConfigError(
                "input_norm 'center' (TransformerLens's centred residual stream) is for SAEs: "
                "a transcoder's output lives at another hook, whose mean it cannot know"
            )
        self.dtype = dtype_name(dtype_from_name(self.dtype))
        for name in ("model_name", "hook_name", "target_hook_name"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string or null, got {type(value).__name__}")
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"metadata must be an object, got {type(self.metadata).__name__}")

    def _validate_transcoder(self) -> None:
        for name in ("transcoder", "skip"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.d_out is None:
            self.d_out = self.d_in
        check_int("d_out", self.d_out, 1)
        if not self.transcoder:
            if self.d_out != self.d_in:
                raise ConfigError(
                    f"d_out={self.d_out} differs from d_in={self.d_in}: only a transcoder "
                    "(transcoder=True) reconstructs another width"
                )
            if self.skip:
                raise ConfigError("skip (W_skip) is for transcoders; set transcoder=True")
            if self.target_hook_name is not None:
                raise ConfigError("target_hook_name is for transcoders; set transcoder=True")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Inverse of `to_dict`; unknown keys are refused so typos do not pass silently."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(
                f"unknown config keys {unknown}; expected a subset of {sorted(names)}"
            )
        missing = [n for n in ("d_in", "d_sae") if n not in data]
        if missing:
            raise ConfigError(f"config is missing required keys {missing}")
        return cls(**data)


_opt = train_field  # a field with its `--help` text


@dataclass
class _RunSettings:
    """The settings every training run has (TrainConfig adds each architecture's own)."""

    model: str = _opt(
        "embedded",
        'HF model name or local dir; "embedded" = all-MiniLM-L6-v2 (encoder); "smollm2" = '
        "SmolLM2-135M-Instruct (causal LM)",
    )
    hook: str = _opt("layers.3.residual", "see `sae-fast hooks MODEL`")
    target_hook: str | None = _opt(
        None, "train a transcoder predicting this hook from --hook (e.g. layers.3.mlp_in -> "
        "layers.3.mlp_out)",
    )  # fmt: skip
    skip: bool = _opt(False, "transcoder: add a learned skip connection x @ W_skip.T")
    corpus: str = _opt("embedded", '"embedded", a .txt/.md file or dir, a .jsonl, a datasets dir')
    text_field: str = _opt("text", "JSONL / datasets field holding the text")
    context_size: int = _opt(128, "tokens per window, special tokens included")
    max_tokens: int = _opt(
        100_000, "distinct training tokens (the first of the corpus; epochs re-read them)"
    )
    cache: str | None = _opt(
        None, "activation cache dir (read if present, else written first); none: stream"
    )
    cache_dtype: str = _opt("float32", "dtype of a cache written: float32 | bfloat16 | float16")
    buffer_tokens: int = _opt(
        131_072, "mixing buffer (activations): half served shuffled while the other fills"
    )
    model_dtype: str = _opt("float32", "dtype of the model's forward passes")
    drop_first: str = _opt("auto", "drop position 0 of each window: auto (causal LMs) | on | off")
    max_norm_ratio: float | None = _opt(
        None, "drop activations with norm > this x the running median (default: 10 for "
        "causal LMs, else off; 0: off)",
    )  # fmt: skip
    activation: str = _opt("topk", architectures.help_text())
    expansion: int = _opt(8, "d_sae = expansion * d_in (unless d_sae is given)")
    d_sae: int | None = _opt(None, "dictionary size; overrides --expansion")
    k: int = _opt(32, "active latents per token (topk) / per token on average (batchtopk)")
    steps: int = _opt(1500, "optimizer steps (tokens trained = steps x batch_size)")
    batch_size: int = _opt(1024, "tokens per step")
    lr: float | None = _opt(
        None, "peak Adam learning rate (default: the recipe's rule of batch size and width, "
        "README 'Training recipe')",
    )  # fmt: skip
    warmup_tokens: int | None = _opt(
        None, "tokens of linear LR warmup (default: 51,200, at most 5%% of the run)"
    )
    decay_start: float = _opt(0.8, "fraction of the run after which the LR decays linearly to 0")
    grad_clip: float | None = _opt(1.0, "max global grad norm (None: off)")
    dead_after_tokens: int = _opt(
        200_000, "a latent is dead (dead %%) after this many tokens without firing; AuxK acts "
        "on silent latents sooner where the architecture revives them (--auxk-after-tokens)",
    )  # fmt: skip
    eval_tokens: int = _opt(
        16_384, "held-out tokens (the text after the training tokens), never trained on; 0: none"
    )
    eval_every: int = _opt(
        250_000, "tokens between held-out evaluations (metrics.jsonl, progress bar); 0: at the end"
    )
    repeat_data: bool = _opt(
        True, "when steps x batch_size exceeds the training tokens, repeat them (epochs, in "
        "metrics.jsonl); --no-repeat-data stops with an error instead",
    )  # fmt: skip
    normalize_activations: bool = _opt(True, "scale inputs to mean norm sqrt(d_in); folded on save")
    autocast_bf16: bool = _opt(False, "bf16 autocast for the forward pass")
    backend: str = _opt("auto", "backend")
    device: str = _opt(
        "auto", 'where the SAE trains: "auto" (CUDA when there is one), cpu, cuda[:N]'
    )
    parallel: str = _opt(
        "none", "none | data | features (launch with torchrun; see README, Scaling out)"
    )
    feature_shards: int = _opt(
        0, "features: shards per data replica (0: all ranks; fewer: a replicas x shards grid)"
    )
    seed: int = _opt(0, "seed")
    out: str = _opt("runs/sae", "run dir: sae/, checkpoints/, metrics.jsonl")
    checkpoint_every: int = _opt(500, "steps between checkpoints (0: only at the end / Ctrl-C)")
    resume: str | None = _opt(None, "checkpoint dir to continue from")
    log_every: int = _opt(50, "log every")
    progress: bool = _opt(True, "tqdm progress bar")


@dataclass
class TrainConfig(*reversed(architectures.train_configs()), _RunSettings):
    """Everything a training run needs; every field is also a `sae-fast train` flag. The
    common settings come first, then each architecture's own (`Architecture.train_configs`:
    AuxK, L1, JumpReLU, Matryoshka), each validated by its owner."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first field that is wrong."""
        self.activation = architectures.get(self.activation).name
        if self.parallel not in PARALLEL:
            raise ConfigError(
                f"unknown parallel mode {self.parallel!r}; expected one of {PARALLEL}"
            )
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; expected one of {BACKENDS}")
        for name, minimum in (
            ("context_size", 4),
            ("max_tokens", 1),
            ("expansion", 1),
            ("k", 1),
            ("batch_size", 1),
            ("eval_tokens", 0),
            ("eval_every", 0),
            ("dead_after_tokens", 1),
            ("checkpoint_every", 0),
            ("log_every", 1),
            ("seed", 0),
            ("feature_shards", 0),
            ("buffer_tokens", 2),
        ):
            check_int(name, getattr(self, name), minimum)
        if isinstance(self.steps, int) and not isinstance(self.steps, bool) and self.steps == 0:
            raise ConfigError(
                "steps is 0: a run with no training step saves an untrained SAE; to write an "
                "activation cache and stop, use `sae-fast collect` (collect_cache in Python)"
            )
        check_int("steps", self.steps, 1)
        self._validate_data()
        if self.warmup_tokens is not None:
            check_int("warmup_tokens", self.warmup_tokens, 0)
        if self.d_sae is not None:
            check_int("d_sae", self.d_sae, 1)
        lr = self.lr
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr < 0):
            raise ConfigError(f"lr must be a number >= 0 (or None: the recipe's), got {lr!r}")
        for settings in architectures.train_configs():
            settings.check(self)
        if not 0.0 <= self.decay_start <= 1.0:
            raise ConfigError(f"decay_start must be in [0, 1], got {self.decay_start}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.target_hook is not None and self.target_hook == self.hook:
            raise ConfigError(
                f"target_hook is the input hook {self.hook!r}: an SAE reconstructs its input "
                "without a target hook; a transcoder's target is another hook"
            )
        if self.skip and self.target_hook is None:
            raise ConfigError("skip (W_skip) is for transcoders: give --target-hook as well")

    def _validate_data(self) -> None:
        from .data.filters import TokenFilter
        from .data.store import CACHE_DTYPES

        if self.cache_dtype not in CACHE_DTYPES:
            raise ConfigError(
                f"cache_dtype must be one of {sorted(CACHE_DTYPES)}, got {self.cache_dtype!r}"
            )
        self.model_dtype = dtype_name(dtype_from_name(self.model_dtype))
        r = self.max_norm_ratio
        TokenFilter.for_model(False, self.drop_first, r)  # ConfigError naming the field
        if r is not None and r != 0 and not r > 1:
            raise ConfigError(f"max_norm_ratio must be > 1, or 0 (off), got {r!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown train config keys {unknown}")
        return cls(**data)


def _required(help: str) -> Any:
    """A dataclass field with no default: its CLI flag is required."""
    return field(metadata={"help": help})


@dataclass
class EvalConfig:
    """`sae-fast eval SAE_DIR`: every field is a flag (the SAE directory is positional)."""

    model: str | None = _opt(None, "model (default: the SAE's model_name)")
    hook: str | None = _opt(None, "hook (default: the SAE's hook_name)")
    corpus: str | None = _opt(None, "corpus (default: the SAE's training corpus)")
    text_field: str = _opt("text", "JSONL / datasets text field")
    context_size: int | None = _opt(None, "tokens per window (default: the SAE's)")
    max_tokens: int = _opt(20_000, "tokens to evaluate on")
    skip_tokens: int | None = _opt(
        None, "tokens to skip first (default: the SAE's training tokens if same corpus)"
    )
    downstream: bool = _opt(True, "splice the SAE into the model and score the outputs")
    error_term: bool = _opt(False, "splice x_hat + (x - x_hat)")
    batch_size: int = _opt(16, "windows per forward pass")
    backend: str = _opt("auto", "SAE backend")
    save_sparsity: bool = _opt(True, "write sparsity.safetensors (log10 density) into SAE_DIR")
    allow_other_model: bool = _opt(False, "use the SAE on a model other than its own")
    json: bool = _opt(False, "print JSON instead of a table")

    def evaluate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `sae_fast.eval.evaluate` this config sets."""
        skip = ("backend", "save_sparsity", "json")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass
class FeaturesConfig:
    """`sae-fast features SAE_DIR`: the feature browser's flags."""

    model: str | None = _opt(None, "model (default: the SAE's model_name)")
    out: str = _opt("site", "output directory")
    corpus: str | None = _opt(None, "corpus (default: the SAE's training corpus)")
    text_field: str = _opt("text", "JSONL / datasets text field")
    max_tokens: int = _opt(50_000, "tokens to scan")
    top: int = _opt(10, "top contexts per feature")
    width: int = _opt(12, "context tokens either side")
    allow_other_model: bool = _opt(False, "use the SAE on a model other than its own")


@dataclass
class MonitorConfig:
    """`sae-fast monitor SAE_DIR`: rules checked against JSONL inputs."""

    rules: str = _required("rules file (.json / .yaml)")
    input: str = _required("JSONL inputs ({'id': ..., 'text': ...})")
    model: str | None = _opt(None, "model (default: the SAE's model_name)")
    output: str | None = _opt(None, "alerts JSONL (default: stdout)")
    text_field: str = _opt("text", "text field of the inputs")
    allow_other_model: bool = _opt(False, "use the SAE on a model other than its own")
    allow_unverified: bool = _opt(False, "let high/critical rules rely on unverified auto labels")
