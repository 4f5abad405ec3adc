"""Detection monitors: rules over SAE features, checked on streamed inputs.

A rules file (JSON, or YAML with the same shape) holds a list of rules, either at the top
level or under "rules":

    - name: negation          # unique
      features: [123, 456]    # fires when ANY of them exceeds the threshold on a token
      threshold: 2.5          # activation > threshold counts (finite, >= 0)
      min_tokens: 2           # at least this many such tokens in one input (default 1)
      severity: high          # low | medium | high | critical (default medium)

Rules are validated against the SAE (feature ids in range) before any input is read. An
alert names the input id, the rule, the token span from the first to the last firing token
(positions in the tokenised input, special tokens included), its text, and the maximum
activation of each of the rule's features there. A transcoder's code, as an SAE's, is
read at its input hook (hook_name).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.activations import iter_activations, token_windows
from ..data.corpus import iter_jsonl
from ..errors import ConfigError
from ..sae import SparseAutoencoder
from ..validate import check_feature_id

SEVERITIES = ("low", "medium", "high", "critical")


@dataclass
class Rule:
    """One detection rule (see the module docstring)."""

    name: str
    features: list[int]
    threshold: float
    min_tokens: int = 1
    severity: str = "medium"


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
    unknown = sorted(set(raw) - {"name", "features", "threshold", "min_tokens", "severity"})
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
    return Rule(name, list(feats), float(thr), min_tokens, severity)


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
    ) -> None:
        self.sae, self.rules, self.model, self.tokenizer = sae, rules, model, tokenizer
        self.hook = sae.require_hook(hook)
        self.context_size = context_size or int(sae.cfg.metadata.get("context_size", 128))
        self.feats = sorted({f for r in rules for f in r.features})

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
        for batch in iter_activations(self.model, self.tokenizer, windows, self.hook):
            code = self.sae.encode(batch.acts.to(device=self.sae.device, dtype=self.sae.dtype))
            act[starts[batch.window] + batch.position] = code[:, idx].float().cpu()
        col = {f: j for j, f in enumerate(self.feats)}
        alerts = []
        for rule in self.rules:
            cols = [col[f] for f in rule.features]
            fired = (act[:, cols] > rule.threshold).any(1)
            n = int(fired.sum())
            if n < rule.min_tokens:
                continue
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
