"""Many SAEs from one forward pass: several hooks (and transcoders' (input, target)
pairs), widths and k values trained in lockstep from one feed.

`plan` turns `--hooks a,b,IN:OUT --expansions 8,16 --k 32,64` into one `TrainConfig` per
SAE, each with its own directory `<out>/<hook>[/<variant>]` (a transcoder's hook is
`IN-to-OUT`; the variant names the widths and k values that vary, e.g. `x16-k64`), its
own metrics, checkpoints and resume. `train_many` streams every hook they read from one
forward pass (stopped after the deepest hook) and trains them all on the same rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import TrainConfig
from ..data import feeds
from ..errors import ConfigError
from . import checkpoint, distributed, start
from .trainer import Trainer, TrainResult, run_together

LATEST = "latest"  # --resume latest: each SAE's newest checkpoint of a common step


def parse_list(text: str | None, what: str) -> list[int] | None:
    """`"8,16,32"` -> [8, 16, 32] (None for None); ConfigError naming `what` otherwise."""
    if text is None:
        return None
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ConfigError(f"{what} lists no value")
    return values


def parse_hooks(text: str | None) -> list[tuple[str, str | None]] | None:
    """`"layers.2.residual,layers.3.mlp_in:layers.3.mlp_out"` -> [(hook, target or None)]."""
    if text is None:
        return None
    pairs = []
    for item in (h.strip() for h in text.split(",")):
        if not item:
            continue
        hook, _, target = item.partition(":")
        pairs.append((hook, target or None))
    if not pairs:
        raise ConfigError("--hooks lists no hook")
    return pairs


def plan(
    cfg: TrainConfig,
    hooks: list[tuple[str, str | None]] | None = None,
    expansions: list[int] | None = None,
    ks: list[int] | None = None,
) -> list[TrainConfig]:
    """One config per SAE (module docstring); just `[cfg]` when nothing is listed."""
    if hooks is None and expansions is None and ks is None:
        return [cfg]
    pairs = hooks or [(cfg.hook, cfg.target_hook)]
    widths: list[int | None] = list(expansions) if expansions else [None]
    k_values = ks or [cfg.k]
    out = Path(cfg.out)
    cfgs, seen = [], {}
    for hook, target in pairs:
        for e in widths:
            for k in k_values:
                where = out / (hook if target is None else f"{hook}-to-{target}")
                variant = "-".join([f"x{e}"] * (len(widths) > 1) + [f"k{k}"] * (len(k_values) > 1))
                if variant:
                    where = where / variant
                if where in seen:
                    raise ConfigError(
                        f"two SAEs would write the same directory {where} ({seen[where]} "
                        "and again): list each hook, width and k once"
                    )
                seen[where] = f"{hook} {variant}".strip()
                changes = dict(
                    hook=hook, target_hook=target, k=k, out=str(where),
                    skip=cfg.skip and target is not None,
                )  # fmt: skip
                if e is not None:
                    changes.update(expansion=e, d_sae=None)
                cfgs.append(dataclasses.replace(cfg, **changes))
    return cfgs


def resolve_latest(cfgs: list[TrainConfig]) -> list[TrainConfig]:
    """`--resume latest`: each SAE resumes from its checkpoint of the newest step every SAE
    of the run has (a kill between their checkpoint writes leaves some a step behind)."""
    if not cfgs or cfgs[0].resume != LATEST:
        return cfgs
    steps = []
    for c in cfgs:
        checkpoint.latest(Path(c.out))  # FileNotFoundError naming the SAE without one
        steps.append({p.name for p in (Path(c.out) / "checkpoints").glob("step_*")})
    common = sorted(set.intersection(*steps))
    if not common:
        raise ConfigError(
            "the SAEs of this run have no checkpoint of a common step to resume from: "
            + "; ".join(f"{c.out}: {sorted(s)}" for c, s in zip(cfgs, steps, strict=True))
        )
    return [
        dataclasses.replace(c, resume=str(Path(c.out) / "checkpoints" / common[-1])) for c in cfgs
    ]


def train_many(cfgs: list[TrainConfig]) -> list[TrainResult]:
    """Train the SAEs of `plan` from one feed (one forward pass for all their hooks)."""
    if not cfgs:
        raise ConfigError("no SAE to train")
    cfgs = resolve_latest(cfgs)
    lead = cfgs[0]
    for c in cfgs[1:]:
        for name in ("model", "corpus", "max_tokens", "batch_size", "steps", "seed", "cache"):
            if getattr(c, name) != getattr(lead, name):
                raise ConfigError(f"SAEs trained from one pass share {name}")
    device = start.train_device(lead.device)
    group, device = distributed.init(lead.parallel, device, lead.feature_shards)
    hooks: list[str] = []
    for c in cfgs:
        hooks += [h for h in feeds.run_hooks(c) if h not in hooks]
    for c in cfgs:  # every directory writable before the model runs
        start.check_writable(Path(c.out))
    source = feeds.open_source(lead, group, device, hooks=hooks)
    trainers = []
    try:
        for c in cfgs:
            trainers.append(Trainer(c, source=source, group=group, device=device))
    except BaseException:
        source.feed.close()
        raise
    return run_together(trainers)
