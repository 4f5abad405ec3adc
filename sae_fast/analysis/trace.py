"""Tracing: which features at one token drive a chosen output, and by how much.

At the SAE's hook, the activation at token `position` is x = Σ_f a_f W_dec[f] + b_dec + e,
with e = x - x̂ the SAE's error term. For a scalar output m and its gradient g = ∂m/∂x,
each part's attribution is its dot product with g (gradient x activation, exact for the
parts' sum to first order):

    feature f    a_f (W_dec[f] · g)
    error        e · g
    bias         b_dec · g

The output m is, for causal LMs, the logit of `target` (default: the model's top next-token
prediction) at `position`; for other models, the projection of the activation on the unit
direction of its reconstruction, m = x · x̂/||x̂|| (g = x̂/||x̂||): how much of the
reconstructed direction each feature supplies.

A transcoder is traced where its output goes: the code a comes from x at its input hook
(hook_name), and y, the activation at its target hook (target_hook_name), is split as
y = Σ_f a_f W_dec[f] + b_dec + x W_skip^T + e, e = y - ŷ; g = ∂m/∂y is the gradient at the
target hook (for encoders, ŷ/||ŷ||), and the skip term's part is `skip_attribution`
(x W_skip^T · g; 0 without a skip connection).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.activations import is_causal_lm
from ..data.fingerprint import check_model
from ..data.hooks import check_width
from ..errors import ConfigError
from ..eval.splice import check_target_width, splice_hooks, spliced
from ..sae import SparseAutoencoder
from ..validate import check_feature_id
from .labels import Labels


@dataclass
class FeatureAttribution:
    """One active feature at the traced token."""

    feature: int
    activation: float
    attribution: float
    label: str = ""
    label_source: str = "none"


@dataclass
class GroupAttribution:
    """A combination of features at the traced token: its summed (linear) attribution, and
    the output's measured drop when the group is ablated together (`ablation_effect`) and
    one at a time (`singles_effect`, summed); `interaction` is the difference."""

    name: str
    features: list[int]
    attribution: float
    ablation_effect: float
    singles_effect: float

    @property
    def interaction(self) -> float:
        """Joint ablation effect minus the sum of single ablations (0: they add up)."""
        return self.ablation_effect - self.singles_effect


@dataclass
class TraceResult:
    """The traced token, the output, and the attributions (largest |attribution| first)."""

    tokens: list[str]
    position: int
    output: str
    output_value: float
    features: list[FeatureAttribution]
    error_attribution: float
    bias_attribution: float
    extra: dict[str, Any] = field(default_factory=dict)
    skip_attribution: float = 0.0  # a skip transcoder's x W_skip^T · g
    groups: list[GroupAttribution] = field(default_factory=list)

    @property
    def total(self) -> float:
        """Sum of all attributions (features, error, bias and a transcoder's skip term)."""
        return (
            sum(f.attribution for f in self.features)
            + self.error_attribution
            + self.bias_attribution
            + self.skip_attribution
        )

    def table(self, top: int = 15) -> str:
        """A text table of the top features and the error term's share."""
        lines = [
            f"token {self.position} {self.tokens[self.position]!r}; output: {self.output} = "
            f"{self.output_value:.4f}",
            f"{'feature':>8} {'activation':>10} {'attribution':>12}  label",
        ]
        for fa in self.features[:top]:
            tag = "" if fa.label_source in ("none", "human") else f" ({fa.label_source})"
            lines.append(
                f"{fa.feature:>8} {fa.activation:>10.3f} {fa.attribution:>12.4f}  {fa.label}{tag}"
            )
        denom = sum(abs(f.attribution) for f in self.features) + abs(self.error_attribution)
        share = abs(self.error_attribution) / denom if denom else 0.0
        lines.append(
            f"{'error':>8} {'':>10} {self.error_attribution:>12.4f}  "
            f"(SAE error term: {share:.1%} of |attribution|)"
        )
        lines.append(f"{'bias':>8} {'':>10} {self.bias_attribution:>12.4f}  (b_dec)")
        if self.extra.get("skip"):
            lines.append(f"{'skip':>8} {'':>10} {self.skip_attribution:>12.4f}  (x W_skip^T)")
        for g in self.groups:
            lines.append(
                f"group {g.name!r} {g.features}: attribution {g.attribution:.4f}; ablated "
                f"together the output drops {g.ablation_effect:.4f}, one at a time "
                f"{g.singles_effect:.4f} in sum (interaction {g.interaction:+.4f})"
            )
        return "\n".join(lines)


def trace(
    model: nn.Module,
    tokenizer: Any,
    sae: SparseAutoencoder,
    text: str,
    position: int,
    target: str | int | None = None,
    hook: str | None = None,
    labels: Labels | None = None,
    groups: dict[str, list[int]] | None = None,
    allow_other_model: bool = False,
) -> TraceResult:
    """Attribute the output at `position` of `text` (tokenised with special tokens; negative
    counts from the end) to the SAE features active there (module docstring), and each of
    `groups` (name: feature ids; default: the top 5 features) jointly (`GroupAttribution`)."""
    check_model(sae, model, allow_other_model)
    hook, target_hook = splice_hooks(sae, hook)
    if not isinstance(text, str) or not text:
        raise ConfigError("text must be a non-empty string")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    n = ids.shape[1]
    if isinstance(position, bool) or not isinstance(position, int) or not -n <= position < n:
        raise ConfigError(f"position must be an integer in [-{n}, {n}), got {position!r}")
    position %= n
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    causal = is_causal_lm(model)
    box: dict[str, torch.Tensor] = {}

    def grab(act: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        check_width(src.shape[-1], sae.d_in, hook)
        if target_hook is not None:
            check_target_width(act.shape[-1], sae.d_out, target_hook)
        box["src"] = src.detach()
        act = act.detach().requires_grad_(True)
        box["act"] = act
        return act

    # an SAE's x is the grabbed activation; a transcoder's is the input hook's
    with torch.enable_grad(), spliced(model, hook, target_hook, grab):
        out = model(input_ids=ids)
    y = box["act"][0, position].detach().to(device=sae.device, dtype=sae.dtype)
    x = box["src"][0, position].to(device=sae.device, dtype=sae.dtype)
    with torch.no_grad():
        vals, idx = sae.encode_sparse(x.unsqueeze(0))
        vals, idx = vals[0], idx[0]
        keep = vals != 0
        vals, idx = vals[keep], idx[keep]
        recon = sae.decode_sparse(vals.unsqueeze(0), idx.unsqueeze(0), like=x.unsqueeze(0))[0]
        scale = sae.decoder_scale(x.unsqueeze(0))  # a per-row input normalisation's, or None
        unit = 1.0 if scale is None else float(scale)
        skip = sae.skip_output(x.unsqueeze(0))
        if skip is not None:
            skip = skip[0]
            recon = recon + skip
    if causal:
        logits = out.logits[0, position]
        if target is None:
            tid = int(logits.argmax())
        elif isinstance(target, int) and not isinstance(target, bool):
            tid = target
        else:
            enc = tokenizer(str(target), add_special_tokens=False)["input_ids"]
            if len(enc) != 1:
                raise ConfigError(f"target {target!r} is not a single token ({len(enc)} tokens)")
            tid = enc[0]
        if not 0 <= tid < logits.shape[0]:
            raise ConfigError(f"target token id {tid} is out of range")
        m = logits[tid]
        (g,) = torch.autograd.grad(m, box["act"])
        g = g[0, position].to(device=sae.device, dtype=sae.dtype)
        output = f"logit of next token {tokenizer.convert_ids_to_tokens(tid)!r}"
        value = float(m.detach())
    else:
        g = recon / recon.norm().clamp_min(1e-12)
        v = "x" if target_hook is None else "y"
        output = f"{v} · {v}̂/||{v}̂|| (activation along its reconstruction)"
        value = float(y @ g)
    with torch.no_grad():
        attr = vals * (sae.W_dec[idx] @ g) * unit
        err = float((y - recon) @ g)
        skip_attr = 0.0 if skip is None else float(skip @ g)
        if scale is None:
            bias = float(sae.b_dec @ g)
        else:  # the denormalised b_dec plus what the normalisation adds back (its mean)
            bias = float(recon @ g) - float(attr.sum()) - skip_attr
    labels = labels or Labels(sae.d_sae)
    feats = []
    for f, a, s in zip(idx.tolist(), vals.tolist(), attr.tolist(), strict=True):
        lab = labels.get(f)
        feats.append(FeatureAttribution(f, a, s, lab.label, lab.source if lab.label else "none"))
    feats.sort(key=lambda fa: (-abs(fa.attribution), fa.feature))
    extra: dict[str, Any] = {}
    if target_hook is not None:
        extra = {"hook": hook, "target_hook": target_hook, "skip": skip is not None}
    result = TraceResult(tokens, position, output, value, feats, err, bias, extra, skip_attr)
    if groups is None:
        groups = {"top 5": [fa.feature for fa in feats[:5]]} if len(feats) > 1 else {}
    active = dict(zip(idx.tolist(), vals.tolist(), strict=True))

    def output_without(fs: list[int]) -> float:
        """The output with features `fs` removed from the activation at `position`."""
        on = [f for f in fs if f in active]
        if not on:
            return value
        a = torch.tensor([active[f] for f in on], device=sae.device, dtype=sae.dtype)
        delta = a @ sae.W_dec[torch.tensor(on, device=sae.device)] * unit
        if not causal:  # the output is linear in the activation: m = y · g
            return float((y - delta) @ g)

        def remove(act: torch.Tensor, _src: torch.Tensor) -> torch.Tensor:
            act = act.clone()
            act[0, position] -= delta.to(act.dtype).to(act.device)
            return act

        with torch.no_grad(), spliced(model, hook, target_hook, remove):
            return float(model(input_ids=ids).logits[0, position, tid])

    for name, fs in groups.items():
        for f in fs:
            check_feature_id(f, sae.d_sae, f"trace group {name!r}")
        joint = value - output_without(fs)
        singles = sum(value - output_without([f]) for f in fs)
        attr_sum = sum(fa.attribution for fa in feats if fa.feature in set(fs))
        result.groups.append(GroupAttribution(name, list(fs), attr_sum, joint, singles))
    return result
