"""Token-by-token generation of a causal LM, with the activation at a hook of every token as
it is processed: what steering prints and what monitors watch.

The prompt runs in one forward pass, then each new token in its own pass over the key/value
cache, so a hook (or a steering patch) sees every token once, in order. Decoding is greedy,
or sampled at `temperature` from a generator seeded with `seed` (the same seed, the same
text). Generation stops after `max_new_tokens` or at the end-of-sequence token.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..data.activations import is_causal_lm
from ..data.hooks import capture_many
from ..errors import ConfigError
from ..validate import check_int


@dataclass
class Token:
    """One token of prompt or generation: its position, id, text and (with a hook) its
    activation there `[d]`; `logprobs` are the next-token log-probabilities after it."""

    position: int
    token_id: int
    text: str
    generated: bool
    act: Tensor | None
    logprobs: Tensor


def check_causal(model: nn.Module, what: str) -> None:
    """ConfigError unless `model` is a causal LM (has next-token logits)."""
    if not is_causal_lm(model):
        name = type(model).__name__
        raise ConfigError(f"{what} needs a causal LM (e.g. --model smollm2), not {name}")


@torch.no_grad()
def stream_tokens(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 20,
    hook: str | None = None,
    seed: int | None = None,
    temperature: float = 1.0,
) -> Iterator[Token]:
    """Yield the prompt's tokens, then each generated one, as the model processes them
    (module docstring); `seed` None decodes greedily."""
    check_causal(model, "generation")
    check_int("max_new_tokens", max_new_tokens, 0)
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError("the prompt must be a non-empty string")
    if seed is not None and not temperature > 0:
        raise ConfigError(f"temperature must be > 0 for sampling, got {temperature!r}")
    device = next(model.parameters()).device
    cur = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
    gen = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    eos = tokenizer.eos_token_id
    # transformers >= 5.2x names the key/value cache `cache`; earlier, `past_key_values`
    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    grab = capture_many(model, [hook], stop=False) if hook else contextlib.nullcontext({})
    past, pos = None, 0
    with grab as box:
        for step in range(max_new_tokens + 1):
            out = model(input_ids=cur, **{cache_arg: past}, use_cache=True)
            past = getattr(out, cache_arg)
            logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
            acts = box[hook][0] if hook else None
            ids = cur[0].tolist()
            for j, t in enumerate(ids):
                text = tokenizer.decode([t], skip_special_tokens=False)
                act = None if acts is None else acts[j]
                yield Token(pos, t, text, step > 0, act, logprobs[j])
                pos += 1
            if step == max_new_tokens:
                return
            if gen is None:
                nxt = int(logprobs[-1].argmax())
            else:
                p = torch.softmax(logprobs[-1] / temperature, dim=-1)
                nxt = int(torch.multinomial(p, 1, generator=gen))
            if nxt == eos:
                return
            cur = torch.tensor([[nxt]], device=device)


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 20,
    seed: int | None = None,
    temperature: float = 1.0,
) -> tuple[str, list[Token]]:
    """The continuation of `prompt` (greedy, or sampled with `seed`) and every token."""
    toks = list(stream_tokens(model, tokenizer, prompt, max_new_tokens, None, seed, temperature))
    new = [t.token_id for t in toks if t.generated]
    return tokenizer.decode(new, skip_special_tokens=True), toks
