"""Detection monitors: rules over SAE features, checked on streamed inputs.

A rules file (JSON, or YAML with the same shape) holds a list of rules, either at the top
level or under "rules":

    - name: negation          # unique
      features: [123, 456]    # a combination of features, see `combine`
      combine: any            # any: a token counts when ANY of them exceeds the threshold;
                              # all: the same, and the rule needs EVERY feature to have
                              #      exceeded it somewhere in the span;
                              # sum: a token counts when their SUM exceeds it
      threshold: 2.5          # activation > threshold counts (finite, >= 0)
      min_tokens: 2           # at least this many such tokens in one input (default 1)
      severity: high          # low | medium | high | critical (default medium)

Rules are validated against the SAE (feature ids in range) before any input is read. An
alert names the input id, the rule, the token span from the first to the last firing token
(positions in the tokenised input, special tokens included), its text, and the maximum
activation of each of the rule's features there. A transcoder's code, as an SAE's, is
read at its input hook (hook_name).

`Monitor.watch(prompt)` runs a causal LM's own generation token by token and checks the
rules as each token is processed: an alert is raised at the token that makes a rule fire,
naming the span so far, and the final alerts give the whole spans.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.activations import iter_activations, token_windows
from ..data.corpus import iter_jsonl
from ..data.filters import TokenFilter
from ..data.fingerprint import check_model
from ..errors import ConfigError
from ..sae import SparseAutoencoder
from ..validate import check_feature_id
from .generation import Token, stream_tokens
from .labels import Labels

SEVERITIES = ("low", "medium", "high", "critical")
COMBINE = ("any", "all", "sum")


@dataclass
class Rule:
    """One detection rule (see the module docstring)."""

    name: str
    features: list[int]
    threshold: float
    min_tokens: int = 1
    severity: str = "medium"
    combine: str = "any"

    def fired(self, act: Tensor) -> Tensor:
        """`[T]` bool: the tokens that count, from this rule's feature activations `[T, m]`."""
        if self.combine == "sum":
            return act.sum(1) > self.threshold
        return (act > self.threshold).any(1)

    def satisfied(self, act: Tensor, fired: Tensor) -> bool:
        """Whether the rule fires, given its activations `[T, m]` and `fired(act)`."""
        if int(fired.sum()) < self.min_tokens:
            return False
        return self.combine != "all" or bool((act > self.threshold).any(0).all())


@dataclass
class Alert:
    """A rule that fired on an input."""

    input_id: Any
    rule: str
    severity: str
    span: tuple[int, int]
    text: str
    tokens: int
    activations: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(
            {
                "input_id": self.input_id,
                "rule": self.rule,
                "severity": self.severity,
                "span": list(self.span),
                "text": self.text,
                "tokens": self.tokens,
                "activations": {str(k): round(v, 5) for k, v in self.activations.items()},
            },
            ensure_ascii=False,
        )


def _rule(raw: Any, i: int, d_sae: int) -> Rule:
    where = f"rule {i + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    keys = {"name", "features", "threshold", "min_tokens", "severity", "combine"}
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where} needs a non-empty string 'name'")
    where = f"rule {name!r}"
    feats = raw.get("features")
    if isinstance(feats, int) and not isinstance(feats, bool):
        feats = [feats]
    if not isinstance(feats, list) or not feats:
        raise ConfigError(f"{where}: 'features' must be a non-empty list of feature ids")
    for f in feats:
        check_feature_id(f, d_sae, where)
    thr = raw.get("threshold")
    if (
        isinstance(thr, bool)
        or not isinstance(thr, (int, float))
        or not math.isfinite(thr)
        or thr < 0
    ):
        raise ConfigError(f"{where}: 'threshold' must be a finite number >= 0, got {thr!r}")
    min_tokens = raw.get("min_tokens", 1)
    if isinstance(min_tokens, bool) or not isinstance(min_tokens, int) or min_tokens < 1:
        raise ConfigError(f"{where}: 'min_tokens' must be an integer >= 1, got {min_tokens!r}")
    severity = raw.get("severity", "medium")
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}: 'severity' must be one of {SEVERITIES}, got {severity!r}")
    combine = raw.get("combine", "any")
    if combine not in COMBINE:
        raise ConfigError(f"{where}: 'combine' must be one of {COMBINE}, got {combine!r}")
    return Rule(name, list(feats), float(thr), min_tokens, severity, combine)


def parse_rules(data: Any, d_sae: int) -> list[Rule]:
    """Validated rules from parsed JSON/YAML data."""
    if isinstance(data, dict):
        data = data.get("rules")
    if not isinstance(data, list) or not data:
        raise ConfigError("the rules file must hold a non-empty list of rules (or 'rules: [...]')")
    rules = [_rule(r, i, d_sae) for i, r in enumerate(data)]
    names = [r.name for r in rules]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"rule names must be unique; repeated: {dup}")
    return rules


def load_rules(path: str | Path, d_sae: int) -> list[Rule]:
    """Read and validate a JSON or YAML rules file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rules file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # yaml.YAMLError / json.JSONDecodeError
        raise ConfigError(f"rules file {path} is not valid {path.suffix[1:]}: {err}") from err
    return parse_rules(data, d_sae)


def check_rule_labels(rules: list[Rule], labels: Labels, allow_unverified: bool = False) -> None:
    """ConfigError if a rule of severity high or critical names a feature whose label is an
    unverified auto label (an LLM's guess nobody checked), unless `allow_unverified`."""
    if allow_unverified:
        return
    for rule in rules:
        if SEVERITIES.index(rule.severity) < SEVERITIES.index("high"):
            continue
        for f in rule.features:
            lab = labels.get(f)
            if lab.source == "auto" and not lab.verified:
                raise ConfigError(
                    f"rule {rule.name!r} (severity {rule.severity}) relies on feature {f}, "
                    f"whose label {lab.label!r} is an unverified auto label: check its "
                    "contexts and record it with `sae-fast label SAE_DIR "
                    f"{f} --verify`, or pass --allow-unverified"
                )


class Monitor:
    """Checks texts against rules: `Monitor(sae, rules, model, tokenizer).check(text, id)`."""

    def __init__(
        self,
        sae: SparseAutoencoder,
        rules: list[Rule],
        model: nn.Module,
        tokenizer: Any,
        hook: str | None = None,
        context_size: int | None = None,
        labels: Labels | None = None,
        allow_unverified: bool = False,
        allow_other_model: bool = False,
    ) -> None:
        check_model(sae, model, allow_other_model)
        if labels is not None:
            check_rule_labels(rules, labels, allow_unverified)
        self.sae, self.rules, self.model, self.tokenizer = sae, rules, model, tokenizer
        self.hook = sae.require_hook(hook)
        self.context_size = context_size or int(sae.cfg.metadata.get("context_size", 128))
        self.feats = sorted({f for r in rules for f in r.features})
        # the tokens training dropped (position 0, norm outliers) stay 0, as special tokens
        self.token_filter = dict(sae.cfg.metadata.get("token_filter") or {})

    @torch.no_grad()
    def check(self, text: str, input_id: Any = None) -> list[Alert]:
        """Alerts of every rule on `text` (long texts are cut into context-size windows;
        spans are then positions in the concatenated windows)."""
        if not isinstance(text, str):
            raise ConfigError(f"input {input_id!r}: text must be a string")
        windows = token_windows(self.tokenizer, [text], self.context_size)
        tokens = [t for w in windows for t in w]
        starts = torch.tensor([0, *(len(w) for w in windows)]).cumsum(0)
        # [T, n_feats]; special tokens stay 0: the SAE never saw them in training
        act = torch.zeros(len(tokens), len(self.feats))
        idx = torch.tensor(self.feats, device=self.sae.device)
        keep = TokenFilter(**self.token_filter)
        for batch in iter_activations(self.model, self.tokenizer, windows, self.hook, keep=keep):
            code = self.sae.encode(batch.acts.to(device=self.sae.device, dtype=self.sae.dtype))
            act[starts[batch.window] + batch.position] = code[:, idx].float().cpu()
        return self._alerts(act, tokens, input_id)

    def _alerts(self, act: Tensor, tokens: list[int], input_id: Any) -> list[Alert]:
        """The rules that fire on feature activations `act [T, n_feats]` of `tokens`."""
        col = {f: j for j, f in enumerate(self.feats)}
        alerts = []
        for rule in self.rules:
            cols = [col[f] for f in rule.features]
            fired = rule.fired(act[:, cols])
            if not rule.satisfied(act[:, cols], fired):
                continue
            n = int(fired.sum())
            where = fired.nonzero(as_tuple=True)[0]
            lo, hi = int(where[0]), int(where[-1])
            span_text = self.tokenizer.decode(tokens[lo : hi + 1], skip_special_tokens=True)
            peak = act[lo : hi + 1][:, cols].max(0).values
            alerts.append(
                Alert(
                    input_id,
                    rule.name,
                    rule.severity,
                    (lo, hi + 1),
                    span_text,
                    n,
                    {f: float(p) for f, p in zip(rule.features, peak, strict=True)},
                )
            )
        return alerts

    @torch.no_grad()
    def watch(
        self,
        prompt: str,
        max_new_tokens: int = 30,
        seed: int | None = None,
        temperature: float = 1.0,
        input_id: Any = "generation",
    ) -> Iterator[Token | Alert]:
        """Causal LMs: the tokens of `prompt` and of the model's continuation as they are
        processed, each followed by the alerts it raised (a rule firing for the first time,
        span so far); returns the final alerts (whole spans) as the generator's value."""
        idx = torch.tensor(self.feats, device=self.sae.device)
        rows: list[Tensor] = []
        tokens: list[int] = []
        raised: set[str] = set()
        final: list[Alert] = []
        stream = stream_tokens(
            self.model, self.tokenizer, prompt, max_new_tokens, self.hook, seed, temperature
        )
        special = set(self.tokenizer.all_special_ids)
        drop_first = bool(self.token_filter.get("drop_first"))
        norms = TokenFilter(False, self.token_filter.get("max_norm_ratio"))  # running median
        for tok in stream:
            yield tok
            tokens.append(tok.token_id)
            kept = tok.token_id not in special and not (drop_first and tok.position == 0)
            if kept and norms.max_norm_ratio is not None:
                one = torch.ones(1, 1, dtype=torch.bool)
                kept = bool(norms.keep(one, {"x": tok.act.view(1, 1, -1)})[0, 0])
            if not kept:  # special or filtered tokens stay 0, as in `check`
                rows.append(torch.zeros(len(self.feats)))
            else:
                x = tok.act.to(device=self.sae.device, dtype=self.sae.dtype).unsqueeze(0)
                rows.append(self.sae.encode(x)[0, idx].float().cpu())
            final = self._alerts(torch.stack(rows), tokens, input_id)
            for alert in final:
                if alert.rule not in raised:
                    raised.add(alert.rule)
                    yield alert
        return final

    def watch_all(
        self, prompt: str, max_new_tokens: int = 30, seed: int | None = None
    ) -> tuple[str, list[Alert], list[Alert]]:
        """`watch` run to the end: (the continuation, alerts as raised, final alerts)."""
        events = self.watch(prompt, max_new_tokens, seed)
        live: list[Alert] = []
        new: list[int] = []
        while True:
            try:
                ev = next(events)
            except StopIteration as stop:
                final = stop.value
                break
            if isinstance(ev, Alert):
                live.append(ev)
            elif ev.generated:
                new.append(ev.token_id)
        return self.tokenizer.decode(new, skip_special_tokens=True), live, final

    def stream(self, inputs: Iterable[tuple[Any, str]]) -> Iterator[Alert]:
        """Alerts over `(input id, text)` pairs, in order."""
        for input_id, text in inputs:
            yield from self.check(text, input_id)


def read_jsonl_inputs(path: str | Path, text_field: str = "text") -> Iterator[tuple[Any, str]]:
    """`(id, text)` per line of a JSONL file (id: the line's "id", else its line number),
    read lazily; FormatError naming the line on a bad one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} does not exist")
    for n, rec in iter_jsonl(path, text_field):
        yield rec.get("id", n), rec[text_field]
