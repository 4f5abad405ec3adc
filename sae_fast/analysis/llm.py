"""The language models that explain and judge features (`autointerp`), behind one interface.

A `Chat` answers chat messages (`complete`) and scores yes/no questions (`yes_scores`: the
log-odds of "Yes" over "No" for each conversation; > 0 leans yes). Two kinds:

- `LocalChat`: a causal LM in this process through its chat template (the offline default
  is SmolLM2-135M-Instruct); yes/no scores from its next-token logits, batched. It also
  scores texts against a description by likelihood (`text_scores`): how much more likely
  the text becomes when the model is told it is about the description (a judge that a
  135M model can be, where its yes/no answers are near chance);
- `HTTPChat`: an OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, llama.cpp's
  server, ollama serve); yes/no scores from `top_logprobs` when the server returns them,
  else from the answer's text (+1 yes, -1 no, 0 neither).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from .generation import check_causal

Messages = list[dict[str, str]]
YES, NO = ("Yes", " Yes", "yes", "YES"), ("No", " No", "no", "NO")
ABOUT = "The following text is about {}.\n"
NEUTRAL = ABOUT.format("something")


class Chat(Protocol):
    """What `autointerp` needs from an LLM."""

    name: str

    def complete(self, messages: Messages, max_tokens: int = 32) -> str:
        """The assistant's reply to `messages` (greedy)."""
        ...

    def yes_scores(self, conversations: list[Messages]) -> list[float]:
        """For each conversation, log P(yes) - log P(no) of the reply's first token."""
        ...


def _answer_score(text: str) -> float:
    word = text.strip().strip(".!\"'").split()[:1]
    w = word[0].lower().strip(".,!:;") if word else ""
    return 1.0 if w == "yes" else -1.0 if w == "no" else 0.0


class LocalChat:
    """A causal LM and its tokenizer as a `Chat` (module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str = "local", batch: int = 16):
        check_causal(model, "an explainer")
        if getattr(tokenizer, "chat_template", None) is None:
            raise ConfigError(f"the explainer {name!r} has no chat template")
        self.model, self.tokenizer, self.name, self.batch = model, tokenizer, name, batch
        self._baseline: dict[str, float] = {}
        ids = [tokenizer.encode(w, add_special_tokens=False) for w in YES + NO]
        firsts = [i[0] for i in ids if i]
        self.yes_ids = torch.tensor(sorted(set(firsts[: len(YES)])))
        self.no_ids = torch.tensor(sorted(set(firsts[len(YES) :])))

    def _prompt(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    @torch.no_grad()
    def complete(self, messages: Messages, max_tokens: int = 32) -> str:
        """Greedy reply (stops at the end-of-turn token): the model's own `generate`, which
        reads only the last position's logits (`generation.generate` keeps every token's)."""
        ids = self.tokenizer.encode(self._prompt(messages), add_special_tokens=False)
        device = next(self.model.parameters()).device
        x = torch.tensor([ids], device=device)
        out = self.model.generate(
            input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens,
            do_sample=False, eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )  # fmt: skip
        return self.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True).strip()

    @torch.no_grad()
    def yes_scores(self, conversations: list[Messages]) -> list[float]:
        """Batched next-token log-odds of the yes over the no tokens."""
        out: list[float] = []
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        for c0 in range(0, len(conversations), self.batch):
            enc = [
                self.tokenizer.encode(self._prompt(m), add_special_tokens=False)
                for m in conversations[c0 : c0 + self.batch]
            ]
            width = max(len(e) for e in enc)
            ids = torch.full((len(enc), width), pad, dtype=torch.long)
            mask = torch.zeros(len(enc), width, dtype=torch.long)
            for r, e in enumerate(enc):
                ids[r, : len(e)], mask[r, : len(e)] = torch.tensor(e), 1
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            last = torch.tensor([len(e) - 1 for e in enc], device=logits.device)
            lp = torch.log_softmax(logits[torch.arange(len(enc)), last].float(), dim=-1).cpu()
            yes = torch.logsumexp(lp[:, self.yes_ids], dim=-1)
            no = torch.logsumexp(lp[:, self.no_ids], dim=-1)
            out += (yes - no).tolist()
        return out

    @torch.no_grad()
    def top_logprobs(self, messages: Messages, k: int = 10) -> list[tuple[str, float]]:
        """The `k` likeliest first reply tokens and their log-probabilities (what an
        OpenAI-compatible server returns as `top_logprobs`)."""
        ids = self.tokenizer.encode(self._prompt(messages), add_special_tokens=False)
        device = next(self.model.parameters()).device
        logits = self.model(input_ids=torch.tensor([ids], device=device)).logits[0, -1]
        top = torch.topk(torch.log_softmax(logits.float(), dim=-1), k)
        return [
            (self.tokenizer.decode([int(i)]), float(v))
            for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]

    @torch.no_grad()
    def _text_logprob(self, prefixes: list[str], texts: list[str]) -> list[float]:
        """Sum of log P(text tokens | prefix) for each (prefix, text) pair, batched."""
        out: list[float] = []
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        for c0 in range(0, len(texts), self.batch):
            pairs = list(
                zip(prefixes[c0 : c0 + self.batch], texts[c0 : c0 + self.batch], strict=True)
            )
            enc = [
                (
                    self.tokenizer.encode(p, add_special_tokens=False),
                    self.tokenizer.encode(t, add_special_tokens=False),
                )
                for p, t in pairs
            ]
            width = max(len(a) + len(b) for a, b in enc)
            ids = torch.full((len(enc), width), pad, dtype=torch.long)
            mask = torch.zeros(len(enc), width, dtype=torch.long)
            scored = torch.zeros(len(enc), width, dtype=torch.bool)
            for r, (a, b) in enumerate(enc):
                ids[r, : len(a) + len(b)] = torch.tensor(a + b)
                mask[r, : len(a) + len(b)] = 1
                scored[r, len(a) : len(a) + len(b)] = True
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).cpu()
            tok = lp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            out += (tok * scored[:, 1:]).sum(-1).tolist()
        return out

    def text_scores(self, description: str, texts: list[str]) -> list[float]:
        """log P(text | "about <description>") - log P(text | "about something") per text:
        > 0 where the description makes the text more likely (the neutral baseline is
        computed once per text)."""
        base = [t for t in texts if t not in self._baseline]
        for t, v in zip(base, self._text_logprob([NEUTRAL] * len(base), base), strict=True):
            self._baseline[t] = v
        cond = self._text_logprob([ABOUT.format(description)] * len(texts), texts)
        return [c - self._baseline[t] for c, t in zip(cond, texts, strict=True)]


class HTTPChat:
    """An OpenAI-compatible chat endpoint as a `Chat`: `HTTPChat("http://host:8000/v1",
    "model-name")` (the `/chat/completions` path is added unless given)."""

    def __init__(self, endpoint: str, model: str, timeout: float = 120.0, api_key: str = ""):
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"--endpoint must be an http(s) URL, got {endpoint!r}")
        if not model:
            raise ConfigError("an HTTP explainer needs --model NAME (the served model)")
        url = endpoint.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.name, self.timeout, self.api_key = model, timeout, api_key

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data = json.loads(resp.read().decode())
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ConfigError(f"the explainer endpoint {self.url} failed: {err}") from err
        if not isinstance(data, dict) or not data.get("choices"):
            raise ConfigError(f"the explainer endpoint {self.url} sent no choices: {data!r}")
        return data["choices"][0]

    def complete(self, messages: Messages, max_tokens: int = 32) -> str:
        """The endpoint's reply at temperature 0."""
        body = {"model": self.name, "messages": messages, "max_tokens": max_tokens}
        choice = self._post({**body, "temperature": 0})
        return str((choice.get("message") or {}).get("content") or "").strip()

    def yes_scores(self, conversations: list[Messages]) -> list[float]:
        """From `top_logprobs` of the first reply token when served, else the answer text."""
        out = []
        for messages in conversations:
            body = {"model": self.name, "messages": messages, "max_tokens": 1}
            choice = self._post({**body, "temperature": 0, "logprobs": True, "top_logprobs": 10})
            content = ((choice.get("logprobs") or {}).get("content")) or []
            if content and content[0].get("top_logprobs"):
                tops = {t["token"]: float(t["logprob"]) for t in content[0]["top_logprobs"]}
                yes = [math.exp(v) for k, v in tops.items() if k in YES]
                no = [math.exp(v) for k, v in tops.items() if k in NO]
                floor = 1e-6
                out.append(math.log(sum(yes) or floor) - math.log(sum(no) or floor))
            else:
                out.append(_answer_score(str((choice.get("message") or {}).get("content") or "")))
        return out
