"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption"),
following SAEBench's method in outline.

A model knows the first letter of many one-token words: a linear probe on the residual
stream reads it. An SAE often has a latent per letter ("starts with S") that fires on most
such words but not all: on some words ("short"), a more specific latent ("the word short")
fires instead and carries the letter's direction itself. The letter latent has been
*absorbed* there, and a monitor or a circuit built on it silently misses those words.

1. **Words.** One-token vocabulary entries of the form " word" (letters only, >= 3 long),
   seeded, split into train and test words.
2. **Activations.** Each word in an in-context prompt ("tartan has the first letter: T ...
   {word} has the first letter:"), read at the SAE's hook on the word's own token.
3. **Probe.** A 26-way logistic regression on the raw activations of the train words; its
   row for letter L is L's direction p_L (unit norm).
4. **Main latent** of L: the latent whose mean activation on train words starting with L
   most exceeds its mean on the others (SAEBench's k=1 sparse probe).
5. **Absorption.** For each test word starting with L that the probe classifies correctly:
   a *false negative* when L's main latent does not fire. It is *absorbed* when among the
   latents that do fire, one has a decoder direction with cosine >= `min_cosine` to p_L and
   contributes >= `min_share` of the reconstruction's projection onto p_L (act * W_dec[i] .
   p_L over x_hat . p_L, the SAE error term left out).
   - absorption rate of L: absorbed words / probe-correct words starting with L;
   - the report's absorption rate: the mean over letters with at least `min_words` such
     words; the fraction of absorbed letters: the share of those letters with at least one
     absorbed word; and the main latents' mean recall (share of words they fire on).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..data.hooks import capture, run_to_hook
from ..errors import ConfigError
from ..sae import SparseAutoencoder
from .probing import fit_logistic

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SHOTS = (("tartan", "T"), ("mirth", "M"), ("blanket", "B"), ("oven", "O"))


def first_letter_words(tokenizer: Any, n: int = 1200, seed: int = 0) -> list[tuple[str, int]]:
    """Up to `n` (word, token id) pairs of one-token words " word" (ascii letters, >= 3)."""
    out = []
    for tok, tid in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([tok])
        word = text[1:] if text.startswith(" ") else ""
        if len(word) >= 3 and word.isascii() and word.isalpha() and word.islower():
            out.append((word, tid))
    out.sort(key=lambda wt: wt[1])
    random.Random(seed).shuffle(out)
    return out[:n]


def _prefix(tokenizer: Any) -> list[int]:
    text = "".join(f"{w} has the first letter: {c}\n" for w, c in SHOTS)
    return tokenizer.encode(text, add_special_tokens=False)


@torch.no_grad()
def word_activations(
    model: nn.Module, tokenizer: Any, words: list[tuple[str, int]], hook: str, batch: int = 32
) -> Tensor:
    """Activations `[n, d]` at `hook` on each word's token in the in-context prompt."""
    prefix = _prefix(tokenizer)
    suffix = tokenizer.encode(" has the first letter:", add_special_tokens=False)
    device = next(model.parameters()).device
    rows = []
    with capture(model, hook) as box:
        for b0 in range(0, len(words), batch):
            ids = torch.tensor([[*prefix, tid, *suffix] for _, tid in words[b0 : b0 + batch]])
            act = run_to_hook(model, box, input_ids=ids.to(device))
            rows.append(act[:, len(prefix)].float().cpu())
    return torch.cat(rows)


@dataclass
class LetterResult:
    """One letter: its main latent, how often it fires, and where it is absorbed."""

    letter: str
    main_latent: int
    n_words: int  # probe-correct test words starting with the letter
    recall: float  # share of them the main latent fires on
    absorbed: int
    absorbing_latents: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Absorbed words / probe-correct words."""
        return self.absorbed / self.n_words if self.n_words else 0.0


@dataclass
class AbsorptionReport:
    """Per-letter results and the probe's own test accuracy."""

    letters: list[LetterResult]
    probe_accuracy: float
    min_words: int

    def scored(self) -> list[LetterResult]:
        """The letters with enough test words."""
        return [r for r in self.letters if r.n_words >= self.min_words]

    @property
    def absorption_rate(self) -> float:
        """Mean absorption rate over the scored letters."""
        s = self.scored()
        return sum(r.rate for r in s) / len(s) if s else float("nan")

    @property
    def absorbed_fraction(self) -> float:
        """Share of scored letters absorbed on at least one word."""
        s = self.scored()
        return sum(r.absorbed > 0 for r in s) / len(s) if s else float("nan")

    @property
    def mean_recall(self) -> float:
        """Mean share of words the main latents fire on."""
        s = self.scored()
        return sum(r.recall for r in s) / len(s) if s else float("nan")

    def table(self) -> str:
        """Per-letter lines and the headline numbers."""
        rows = [f"{'letter':>6} {'latent':>7} {'words':>5} {'recall':>6} {'absorbed':>8}"]
        for r in self.letters:
            rows.append(
                f"{r.letter:>6} {r.main_latent:>7} {r.n_words:>5} {r.recall:6.2f} {r.absorbed:>8}"
            )
        rows.append(
            f"probe accuracy {self.probe_accuracy:.3f}; over {len(self.scored())} letters: "
            f"absorption rate {self.absorption_rate:.3f}, absorbed letters "
            f"{self.absorbed_fraction:.3f}, main-latent recall {self.mean_recall:.3f}"
        )
        return "\n".join(rows)


@torch.no_grad()
def absorption(
    sae: SparseAutoencoder,
    model: nn.Module,
    tokenizer: Any,
    n_words: int = 1200,
    test_share: float = 0.3,
    min_cosine: float = 0.025,
    min_share: float = 0.4,
    min_words: int = 3,
    seed: int = 0,
    hook: str | None = None,
) -> AbsorptionReport:
    """The first-letter absorption of `sae` on `model` (module docstring)."""
    if sae.cfg.transcoder:
        raise ConfigError("absorption reads SAE latents at one hook; this is a transcoder")
    hook = sae.require_hook(hook)
    words = first_letter_words(tokenizer, n_words, seed)
    if len(words) < 100:
        raise ConfigError(f"the tokenizer has only {len(words)} one-token words")
    x = word_activations(model, tokenizer, words, hook)
    y = torch.tensor([LETTERS.index(w[0]) for w, _ in words])
    n_test = int(len(words) * test_share)
    tr, te = slice(n_test, None), slice(0, n_test)
    mu, sd = x[tr].mean(0), x[tr].std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    dirs, biases = [], []
    for c in range(26):  # one-vs-rest logistic probes (a letter absent from train: zeros)
        yc = (y[tr] == c).long()
        w, b = (
            fit_logistic(z[tr], yc) if yc.any() else (torch.zeros(x.shape[1]), torch.tensor(-1e9))
        )
        dirs.append(w / sd)  # back to raw-activation units
        biases.append(b - (w / sd) @ mu)
    P, B = torch.stack(dirs), torch.stack(biases)  # [26, d]
    pred = (x @ P.T + B).argmax(1)
    probe_acc = float((pred[te] == y[te]).float().mean())
    codes = sae.encode(x.to(device=sae.device, dtype=sae.dtype)).float().cpu()
    W_dec = sae.W_dec.detach().float().cpu()
    unit = P / P.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ unit.T  # [d_sae, 26]
    results = []
    for c, letter in enumerate(LETTERS):
        on = y[tr] == c
        if not on.any():
            continue
        gap = codes[tr][on].mean(0) - codes[tr][~on].mean(0)
        main = int(torch.argmax(gap))
        idx = [i for i in range(n_test) if y[i] == c and pred[i] == c]
        absorbed, absorbing, fired = 0, [], 0
        for i in idx:
            f = codes[i]
            if f[main] > 0:
                fired += 1
                continue
            share = f * (W_dec @ unit[c])  # each latent's part of x_hat's letter projection
            proj = float(share.sum())
            cand = ((f > 0) & (cos[:, c] >= min_cosine)).nonzero(as_tuple=True)[0]
            if proj > 0 and len(cand):
                best = int(cand[torch.argmax(share[cand])])
                if float(share[best]) >= min_share * proj:
                    absorbed += 1
                    absorbing.append(best)
        n = len(idx)
        results.append(
            LetterResult(letter, main, n, fired / n if n else 0.0, absorbed, sorted(set(absorbing)))
        )
    return AbsorptionReport(results, probe_acc, min_words)
