"""Auto-interpretation with a measured score: an LLM explains each feature from some of its
contexts, then judges held-out contexts with the explanation alone.

For each chosen feature (random live features, seeded, or given ids):

1. **Contexts.** One pass over the corpus (`feature_report`) keeps the feature's top
   activations and a uniform sample of its activations. The explainer gets `n_explain` of
   them (the even top ranks, then samples), with the tokens where the feature fires marked
   `<<like this>>`. The held-out positives are `n_test` others, from windows the explainer
   never saw; the negatives are `n_test` contexts from other unseen windows where the
   feature does not fire on any token.
2. **Explanation.** `Chat.complete` on the marked contexts and the marked words; the first
   line of the reply, trimmed, is the label.
3. **Detection.** For each held-out context (positives and negatives, no marks): "does the
   description match this text?", scored as the log-odds of Yes over No. The score is the
   balanced accuracy of calling the top half "fires" (the judge is told that half fire, as
   in balanced detection sets; ties broken by a seeded shuffle) and the AUROC of the scores.
4. **Fuzzing.** Each held-out positive is shown twice: once with the tokens where the
   feature fires marked, once with as many non-firing tokens marked. "Do the marked words
   match the description?" Balanced accuracy as above.
5. **Shuffled labels.** Detection again with each feature given another feature's label (a
   seeded derangement). Real labels must score higher than shuffled ones on average, or
   the pipeline measures nothing.

Results go to `labels.json` as source "auto", unverified, with the explainer, the scores and
the contexts (window, position) used; human labels are never overwritten.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.activations import iter_activations
from ..data.filters import TokenFilter
from ..errors import ConfigError, DataError
from ..files import atomic_file
from ..sae import SparseAutoencoder
from .browser import TokenPieces
from .features import Example, FeatureReport
from .labels import Labels
from .llm import Chat, Messages

SUMMARY_FILE = "autointerp.json"
EXPLAIN_SYSTEM = (
    "You are an interpretability researcher. You read text excerpts in which some words are "
    "marked with << >>, and say in a few words what the marked words have in common."
)


@dataclass
class Context:
    """A piece of a window: token ids, the feature's activation on each, and the kept
    token's index in it."""

    window: int
    position: int
    ids: list[int]
    acts: list[float]
    center: int

    def fired(self, frac: float = 0.25) -> list[int]:
        """Indices of the tokens where the feature fires above `frac` of its peak here."""
        peak = max(self.acts, default=0.0)
        return [i for i, a in enumerate(self.acts) if a > 0 and a >= frac * peak]


def context_of(ex: Example, windows: Sequence[Sequence[int]], width: int) -> Context:
    """The context of a collected example, cut to its window's ends."""
    ids, acts, centre = ex.span(windows, width)
    return Context(ex.window, ex.position, ids, acts, centre)


def render(ctx: Context, pieces: TokenPieces, marks: Sequence[int] = ()) -> str:
    """The context as text, the tokens at `marks` wrapped in << >>."""
    out, marked = [], set(marks)
    for i, t in enumerate(ctx.ids):
        p = pieces(t)
        if i in marked:
            lead = p[: len(p) - len(p.lstrip())]
            p = f"{lead}<<{p.lstrip()}>>"
        out.append(p)
    return " ".join("".join(out).split())


# One worked example per kind of feature (a topic, a piece of syntax): small explainers copy
# the form of the answer, so the label names the pattern instead of describing the task.
EXPLAIN_SHOTS = (
    (
        ["I flew from <<Paris>> to Rome last week", "the mayor of <<London>> said that",
         "trains to <<Berlin>> leave every hour"],
        ["Paris", "London", "Berlin"],
        "names of cities, such as 'Paris'",
    ),
    (
        ["x = len<<(>>items) + 1", "print<<(>>total)", "return sorted<<(>>keys)"],
        ["(", "(", "("],
        "the token '(' opening a function call",
    ),
)  # fmt: skip


def _explain_turn(lines: list[str], words: list[str]) -> str:
    numbered = "\n".join(f"{i + 1}. {t}" for i, t in enumerate(lines))
    return (
        f"Excerpts:\n{numbered}\n\nMarked words: {', '.join(words[:40])}\n\n"
        "What do the marked words have in common? Reply with a short description "
        "(at most 8 words) and nothing else."
    )


def explain_messages(contexts: list[Context], pieces: TokenPieces) -> Messages:
    """The explainer's prompt: worked examples, then the marked contexts and marked words."""
    msgs: Messages = [{"role": "system", "content": EXPLAIN_SYSTEM}]
    for lines, words, answer in EXPLAIN_SHOTS:
        msgs.append({"role": "user", "content": _explain_turn(lines, words)})
        msgs.append({"role": "assistant", "content": answer})
    lines, words = [], []
    for c in contexts:
        marks = c.fired()
        lines.append(render(c, pieces, marks))
        words += [pieces(c.ids[m]).strip() for m in marks]
    msgs.append({"role": "user", "content": _explain_turn(lines, words)})
    return msgs


def clean_label(text: str, max_words: int = 10) -> str:
    """The first line of an explainer's reply, without quotes, lead-ins or a final stop."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.strip(" \"'`*")
    for lead in ("Description:", "Answer:", "The marked words are", "The marked words"):
        if line.lower().startswith(lead.lower()):
            line = line[len(lead) :].strip(" :")
    line = line.strip(" \"'`*").rstrip(".")
    return " ".join(line.split()[:max_words])


JUDGE_SYSTEM = "You answer Yes or No."


def detection_messages(label: str, text: str) -> Messages:
    """Detection: does the description match the (unmarked) text?"""
    user = (
        f'Description: "{label}"\nText: {text}\nDoes the description match something in this text?'
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def fuzzing_messages(label: str, text: str) -> Messages:
    """Fuzzing: are the marked words examples of the description?"""
    user = f'Description: "{label}"\nText: {text}\nAre the words in << >> examples of it?'
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def balanced_accuracy(scores: Sequence[float], truth: Sequence[bool], seed: int = 0) -> float:
    """Balanced accuracy of calling the top `sum(truth)` scores positive (ties in a seeded
    random order)."""
    n_pos = sum(truth)
    n_neg = len(truth) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ConfigError("balanced accuracy needs positives and negatives")
    tie = list(range(len(scores)))
    random.Random(seed).shuffle(tie)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], tie[i]))
    called = set(order[:n_pos])
    tp = sum(1 for i in called if truth[i])
    tn = sum(1 for i in range(len(truth)) if not truth[i] and i not in called)
    return 0.5 * (tp / n_pos + tn / n_neg)


def auroc(scores: Sequence[float], truth: Sequence[bool]) -> float:
    """P(a random positive scores above a random negative), ties counting half."""
    pos = [s for s, t in zip(scores, truth, strict=True) if t]
    neg = [s for s, t in zip(scores, truth, strict=True) if not t]
    if not pos or not neg:
        raise ConfigError("AUROC needs positives and negatives")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@dataclass
class FeatureScore:
    """One feature's label and scores."""

    feature: int
    label: str
    detection: float
    detection_auroc: float
    fuzzing: float
    shuffled_label: str = ""
    shuffled_detection: float = float("nan")
    contexts: dict[str, Any] = field(default_factory=dict)


@dataclass
class AutoInterpResult:
    """Every scored feature, the explainer, and the features left out (too few contexts)."""

    explainer: str
    features: list[FeatureScore]
    skipped: list[int] = field(default_factory=list)
    kept_human: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per phase

    def mean(self, name: str) -> float:
        """Mean of one score over the scored features (nan if none)."""
        vals = [getattr(f, name) for f in self.features]
        vals = [v for v in vals if v == v]
        return sum(vals) / len(vals) if vals else float("nan")

    def summary(self) -> dict[str, Any]:
        """The headline numbers: mean detection (real and shuffled labels), AUROC, fuzzing."""
        return {
            "explainer": self.explainer,
            "n_features": len(self.features),
            "detection": self.mean("detection"),
            "detection_auroc": self.mean("detection_auroc"),
            "fuzzing": self.mean("fuzzing"),
            "shuffled_detection": self.mean("shuffled_detection"),
            "skipped": self.skipped,
            "kept_human": self.kept_human,
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
        }

    def table(self) -> str:
        """Per-feature lines and the summary."""
        rows = [f"{'feature':>8}  {'detect':>6}  {'auroc':>5}  {'fuzz':>5}  {'shuf':>5}  label"]
        for f in self.features:
            rows.append(
                f"{f.feature:>8}  {f.detection:6.3f}  {f.detection_auroc:5.3f}  "
                f"{f.fuzzing:5.3f}  {f.shuffled_detection:5.3f}  {f.label}"
            )
        s = self.summary()
        rows.append(
            f"mean over {s['n_features']} features ({self.explainer}): detection "
            f"{s['detection']:.3f} (shuffled labels {s['shuffled_detection']:.3f}), AUROC "
            f"{s['detection_auroc']:.3f}, fuzzing {s['fuzzing']:.3f}"
        )
        return "\n".join(rows)


def choose_features(report: FeatureReport, n: int, min_count: int, seed: int = 0) -> list[int]:
    """`n` random features (seeded) that fired at least `min_count` times in the report."""
    live = (report.counts >= min_count).nonzero(as_tuple=True)[0].tolist()
    random.Random(seed).shuffle(live)
    return sorted(live[:n])


@torch.no_grad()
def negative_contexts(
    sae: SparseAutoencoder,
    model: nn.Module,
    tokenizer: Any,
    windows: Sequence[Sequence[int]],
    hook: str,
    features: list[int],
    per_feature: int,
    width: int,
    avoid: set[int],
    seed: int = 0,
    max_windows: int = 48,
) -> dict[int, list[Context]]:
    """For each feature, `per_feature` contexts from windows not in `avoid` in which it fires
    on no token (seeded)."""
    rng = random.Random(seed)
    pool = [w for w in range(len(windows)) if w not in avoid]
    rng.shuffle(pool)
    pool = sorted(pool[:max_windows])
    if not pool:
        raise ConfigError("no windows left for negative contexts: scan more tokens")
    keep = TokenFilter(**(sae.cfg.metadata.get("token_filter") or {}))
    longest = max(len(windows[w]) for w in pool)
    fired = torch.zeros(len(features), len(pool), longest, dtype=torch.bool)
    seen = torch.zeros(len(pool), longest, dtype=torch.bool)
    col = {f: i for i, f in enumerate(features)}
    feats = torch.tensor(features)
    for b in iter_activations(model, tokenizer, [windows[w] for w in pool], hook, keep=keep):
        vals, idx = sae.encode_sparse(b.acts.to(device=sae.device, dtype=sae.dtype))
        vals, idx = vals.cpu(), idx.cpu()
        seen[b.window, b.position] = True
        hit = (idx.unsqueeze(-1) == feats) & (vals > 0).unsqueeze(-1)  # [n, k, F]
        rows = hit.any(1)  # [n, F]
        for j in range(len(features)):
            sel = rows[:, j]
            fired[j, b.window[sel], b.position[sel]] = True
    out: dict[int, list[Context]] = {}
    for f in features:
        j = col[f]
        near = torch.nn.functional.max_pool1d(
            fired[j].float().unsqueeze(1), 2 * width + 1, stride=1, padding=width
        ).squeeze(1).bool()  # fmt: skip
        cand = (seen & ~near).nonzero().tolist()
        rng.shuffle(cand)
        got = []
        for wi, pos in cand[:per_feature]:
            window = windows[pool[wi]]
            lo, hi = max(0, pos - width), min(len(window), pos + width + 1)
            ids = list(window[lo:hi])
            got.append(Context(pool[wi], pos, ids, [0.0] * len(ids), pos - lo))
        out[f] = got
    return out


def _split(report: FeatureReport, f: int, windows, width: int, n_explain: int, n_test: int):
    """(explain, held-out positives) contexts of `f`, the held-out from unseen windows."""
    top = report.top_examples(f)
    sample = report.sample_examples(f)
    first = top[0::2] + sample + top[1::2]
    explain = first[:n_explain]
    used = {e.window for e in explain}
    test, taken = [], set()
    for e in top[1::2] + sample[::-1] + top[0::2]:
        if e.window in used or (e.window, e.position) in taken:
            continue
        test.append(e)
        taken.add((e.window, e.position))
        if len(test) == n_test:
            break
    return [context_of(e, windows, width) for e in explain], [
        context_of(e, windows, width) for e in test
    ]


def _detect(chat: Chat, label: str, texts: list[str]) -> list[float]:
    """Detection scores of `texts` under `label`: by likelihood where the chat offers it
    (`LocalChat.text_scores`), else by the yes/no question."""
    by_text = getattr(chat, "text_scores", None)
    if callable(by_text):
        return list(by_text(label, texts))
    return chat.yes_scores([detection_messages(label, t) for t in texts])


def _fuzzed(ctx: Context, rng: random.Random) -> list[int]:
    """As many non-firing token indices as the context has firing ones, at random."""
    right = ctx.fired()
    wrong = [i for i, a in enumerate(ctx.acts) if a <= 0]
    rng.shuffle(wrong)
    return sorted(wrong[: max(1, len(right))])


def autointerp(
    sae: SparseAutoencoder,
    model: nn.Module,
    tokenizer: Any,
    chat: Chat,
    report: FeatureReport,
    windows: Sequence[Sequence[int]],
    hook: str,
    features: list[int] | None = None,
    n_features: int = 50,
    n_explain: int = 8,
    n_test: int = 8,
    seed: int = 0,
) -> AutoInterpResult:
    """Explain and score features (module docstring) from a `report` collected over
    `windows` at `hook` (with width = the context width used)."""
    if n_explain < 1 or n_test < 2:
        raise ConfigError("need n_explain >= 1 and n_test >= 2")
    width = report.width
    min_count = n_explain + n_test
    if features is None:
        features = choose_features(report, n_features, min_count, seed)
    if not features:
        raise ConfigError(f"no feature fired {min_count}+ times: scan more tokens")
    pieces = TokenPieces(tokenizer)
    rng = random.Random(seed)
    splits, skipped = {}, []
    for f in features:
        if not 0 <= f < sae.d_sae:
            raise ConfigError(f"feature {f} is out of range for d_sae={sae.d_sae}")
        explain, pos = _split(report, f, windows, width, n_explain, n_test)
        if len(pos) >= 2 and explain:
            splits[f] = (explain, pos)
        else:
            skipped.append(f)
    t0 = time.perf_counter()
    avoid = {c.window for ex, pos in splits.values() for c in ex + pos}
    negs = negative_contexts(
        sae, model, tokenizer, windows, hook, list(splits), n_test, width, avoid, seed
    )
    t1 = time.perf_counter()
    labels: dict[int, str] = {}
    for f, (explain, _) in splits.items():
        labels[f] = clean_label(chat.complete(explain_messages(explain, pieces), max_tokens=24))
    t2 = time.perf_counter()
    order = [f for f in splits if labels[f] and len(negs[f]) >= 2]
    skipped += [f for f in splits if f not in order]
    perm = order[:]
    rng.shuffle(perm)
    shuffled = {perm[i]: labels[perm[(i + 1) % len(perm)]] for i in range(len(perm))}
    scores = []
    for f in order:
        explain, pos = splits[f]
        neg = negs[f][: len(pos)]
        cases = pos + neg
        truth = [True] * len(pos) + [False] * len(neg)
        texts = [render(c, pieces) for c in cases]
        det = _detect(chat, labels[f], texts)
        shuf = _detect(chat, shuffled[f], texts) if len(order) > 1 else None
        fuzz_cases = [render(c, pieces, c.fired()) for c in pos]
        fuzz_cases += [render(c, pieces, _fuzzed(c, rng)) for c in pos]
        fz = chat.yes_scores([fuzzing_messages(labels[f], t) for t in fuzz_cases])
        fz_truth = [True] * len(pos) + [False] * len(pos)
        scores.append(
            FeatureScore(
                f,
                labels[f],
                balanced_accuracy(det, truth, seed + f),
                auroc(det, truth),
                balanced_accuracy(fz, fz_truth, seed + f),
                shuffled.get(f, "") if shuf is not None else "",
                balanced_accuracy(shuf, truth, seed + f) if shuf is not None else float("nan"),
                {
                    "explain": [[c.window, c.position] for c in explain],
                    "positive": [[c.window, c.position] for c in pos],
                    "negative": [[c.window, c.position] for c in neg],
                },
            )
        )
    seconds = {"negatives": t1 - t0, "explain": t2 - t1, "score": time.perf_counter() - t2}
    return AutoInterpResult(chat.name, scores, skipped, seconds=seconds)


def save_labels(
    result: AutoInterpResult, labels: Labels, sae_dir: str | Path, source_note: str = ""
) -> Path:
    """Write the labels (auto, unverified; human ones kept) and `autointerp.json` into
    `sae_dir` (a pretrained spec: its Hugging Face cache folder)."""
    from ..formats.pretrained import sae_directory

    sae_dir = sae_directory(sae_dir)
    for s in result.features:
        if labels.get(s.feature).source == "human":
            result.kept_human.append(s.feature)
            continue
        labels.set(
            s.feature,
            s.label,
            source="auto",
            verified=False,
            note=source_note,
            explainer=result.explainer,
            scores={
                "detection": round(s.detection, 4),
                "detection_auroc": round(s.detection_auroc, 4),
                "fuzzing": round(s.fuzzing, 4),
            },
            contexts=s.contexts,
        )
    labels.save(Path(sae_dir) / "labels.json")
    path = Path(sae_dir) / SUMMARY_FILE
    data = {"summary": result.summary(), "features": [asdict(f) for f in result.features]}
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path


def autointerp_dir(
    sae_dir: str | Path,
    chat: Chat | None = None,
    *,
    subject_model: str | None = None,
    corpus: str | None = None,
    text_field: str = "text",
    max_tokens: int = 30_000,
    n_features: int = 50,
    features: list[int] | None = None,
    width: int = 8,
    seed: int = 0,
    allow_other_model: bool = False,
) -> tuple[AutoInterpResult, Path]:
    """`sae-fast autointerp`: load the SAE and its model, scan `max_tokens` tokens of the
    corpus after the SAE's training tokens, explain and score, save. `chat` defaults to the
    local SmolLM2-135M-Instruct (the subject model itself when that is the SAE's model)."""
    from ..data.activations import load_model
    from ..data.smollm2 import NAME as SMOLLM2
    from ..eval.evaluate import default_skip
    from .llm import LocalChat
    from .scan import scan_corpus

    head = SparseAutoencoder.load(sae_dir)
    if head.cfg.transcoder:
        raise ConfigError("autointerp explains SAE features; this is a transcoder")
    corpus = corpus or head.cfg.metadata.get("corpus", "embedded")
    skip = default_skip(head, corpus)  # held-out text: after the training tokens
    t0 = time.perf_counter()
    kw: dict[str, Any] = dict(
        model=subject_model, corpus=corpus, text_field=text_field, max_tokens=max_tokens,
        n_top=16, n_samples=16, width=width, seed=seed, allow_other_model=allow_other_model,
    )  # fmt: skip
    try:
        scan = scan_corpus(sae_dir, skip_tokens=skip, **kw)
    except DataError:  # the corpus is no longer than the training run: reuse it, say so
        warnings.warn(f"corpus {corpus} has no tokens past the SAE's training run: "
                      "the contexts come from its training text", stacklevel=2)  # fmt: skip
        scan = scan_corpus(sae_dir, **kw)
    seconds = time.perf_counter() - t0
    sae, model, tokenizer = scan.sae, scan.model, scan.tokenizer
    if chat is None:
        chat_model, chat_tok = (
            (model, tokenizer) if scan.model_name == SMOLLM2 else load_model(SMOLLM2)
        )
        chat = LocalChat(chat_model, chat_tok, name="SmolLM2-135M-Instruct (local)")
    result = autointerp(
        sae, model, tokenizer, chat, scan.report, scan.windows, scan.hook, features,
        n_features, seed=seed,
    )  # fmt: skip
    result.seconds = {"scan": seconds, **result.seconds}
    labels = Labels.load(sae_dir, sae.d_sae)
    path = save_labels(result, labels, sae_dir, f"autointerp on {corpus}")
    return result, path
