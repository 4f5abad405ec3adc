"""Matryoshka BatchTopK (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka
Sparse Autoencoders"; SAELens "matryoshka_batchtopk"): a BatchTopK SAE whose latents are
nested groups. `options["matryoshka_widths"]` lists the inner prefix widths (ascending,
each below d_sae); besides the full reconstruction, each prefix of latents must reconstruct
the input on its own:

    loss = mse(full) + sum over w in widths of mse(acts[:, :w] @ W_dec[:w] + b_dec) + AuxK

so the first latents learn the general features and later ones refine them. Inference is
BatchTopK's (the estimated threshold in eval mode). It is saved as SAELens saves it for
inference: a JumpReLU SAE whose threshold is that estimate for every latent, with our own
architecture and widths in the cfg's `sae_fast` block, so that both libraries load it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from ..output import SAEOutput
from ..validate import train_field
from .base import AuxKTraining, TrainState
from .batchtopk import BatchTopK

if TYPE_CHECKING:
    from ..config import SAEConfig
    from ..sae import SparseAutoencoder

WIDTHS = "matryoshka_widths"


def check_order(widths: list[int]) -> None:
    """ConfigError unless `widths` is non-empty, strictly increasing and >= 1."""
    if not widths or widths[0] < 1 or any(b <= a for a, b in itertools.pairwise(widths)):
        raise ConfigError(f"{WIDTHS} must be strictly increasing and >= 1, got {widths}")


def parse_widths(text: str | list[int] | None, d_sae: int) -> list[int]:
    """The inner widths from `--matryoshka-widths 128,512` (or a list); a trailing d_sae,
    as SAELens writes it, is dropped. ConfigError naming what is wrong."""
    if text is None or text == "":
        raise ConfigError(f"activation 'matryoshka_batchtopk' needs --{WIDTHS.replace('_', '-')}")
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        widths = [int(str(w).strip()) for w in items]
    except ValueError:
        raise ConfigError(f"{WIDTHS} must be integers, got {text!r}") from None
    if widths and widths[-1] == d_sae:
        widths = widths[:-1]
    if not widths:
        raise ConfigError(f"{WIDTHS} must name at least one width below d_sae ({d_sae})")
    check_order(widths)
    if widths[-1] >= d_sae:
        raise ConfigError(f"{WIDTHS} must stay below d_sae ({d_sae}), got {widths}")
    return widths


@dataclass
class MatryoshkaTraining:
    """Matryoshka's training setting: the nested prefix widths."""

    matryoshka_widths: str | None = train_field(
        None, "matryoshka_batchtopk: nested prefix widths below d_sae, e.g. 256,1024"
    )

    @staticmethod
    def check(cfg: Any) -> None:
        """The widths are checked against the dictionary when the run builds it."""


class MatryoshkaBatchTopK(BatchTopK):
    name: ClassVar[str] = "matryoshka_batchtopk"
    saelens_name: ClassVar[str] = "matryoshka_batchtopk"
    summary: ClassVar[str] = "BatchTopK with nested prefix losses (--matryoshka-widths)"
    train_configs: ClassVar[tuple[type, ...]] = (AuxKTraining, MatryoshkaTraining)
    option_names: ClassVar[tuple[str, ...]] = (WIDTHS,)

    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        super().validate(cfg)
        if WIDTHS not in cfg.options:
            raise ConfigError(f"activation {cls.name!r} needs options[{WIDTHS!r}]")
        widths = cfg.options[WIDTHS]
        if not isinstance(widths, list) or not all(
            isinstance(w, int) and not isinstance(w, bool) for w in widths
        ):
            raise ConfigError(f"{WIDTHS} must be a list of integers, got {widths!r}")
        # a shard holds fewer latents than the widths name: only the order is checked here,
        # the bound against the whole dictionary when the run is configured (train_options)
        check_order(widths)

    @classmethod
    def train_options(cls, cfg: Any, d_sae: int) -> dict[str, Any]:
        return {WIDTHS: parse_widths(cfg.matryoshka_widths, d_sae)}

    @classmethod
    def train_terms(
        cls, run: TrainState, x: Tensor, target: Tensor
    ) -> tuple[SAEOutput, dict[str, Tensor]]:
        out, terms = super().train_terms(run, x, target)
        sae, shard = run.sae, run.shard
        acts = out.feature_acts  # this rank's latents [shard.lo, shard.hi) of the dictionary
        decoded = torch.zeros_like(out.reconstruction) + shard.decoder_bias(sae.b_dec)
        prev = 0
        inner = x.new_zeros(())
        for width in sae.cfg.options[WIDTHS]:
            cut = min(max(width - shard.lo, 0), shard.size)  # this shard's part of the prefix
            decoded = decoded + acts[:, prev:cut] @ sae.W_dec[prev:cut]
            prev = cut
            inner = inner + (shard.sum(decoded) - target).pow(2).sum(-1).mean()
        terms["inner_mse"] = inner
        return out, terms

    # ---------------------------------------------------------------- SAELens
    @classmethod
    def saelens_architecture(cls, sae: SparseAutoencoder) -> str:
        return "jumprelu"  # as SAELens saves a Matryoshka SAE for inference

    @classmethod
    def saelens_forms(cls) -> tuple[str, ...]:
        return (*super().saelens_forms(), "jumprelu")

    @classmethod
    def saelens_fields(cls, sae: SparseAutoencoder) -> dict[str, Any]:
        return {}  # k and the widths travel in the sae_fast block (options), not SAELens's

    @classmethod
    def saelens_tensors(cls, sae: SparseAutoencoder) -> dict[str, Tensor]:
        out = super().saelens_tensors(sae)
        thr = cls.inference_threshold(
            sae
        )  # not estimated yet: 0, which makes it a plain ReLU there
        out["threshold"] = torch.full((sae.d_sae,), thr or 0.0, dtype=sae.dtype)
        return out

    @classmethod
    def tensors_from_saelens(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: t for n, t in super().tensors_from_saelens(tensors).items() if n != "threshold"}

    @classmethod
    def from_saelens(cls, raw: dict[str, Any], where: str) -> dict[str, Any]:
        ours = raw.get("sae_fast") or {}
        options = ours.get("options") or {}
        k = raw.get("k", ours.get("k"))
        if k is None:
            raise ConfigError(f"{where} is missing the key 'k' ({cls.name!r} needs it)")
        fields = super().from_saelens({**raw, "k": k}, where)
        if WIDTHS not in options and WIDTHS in raw:  # a SAELens training cfg
            d_sae = raw.get("d_sae")
            fields["options"] = {WIDTHS: parse_widths(raw[WIDTHS], d_sae)}
        return fields
