"""The architecture interface: everything that differs between SAE architectures, in one
class per architecture (docs/design.md, "Architectures").

An architecture owns
- its config fields and their validation (`uses_k`, `validate`);
- its per-SAE state beyond W_enc, b_enc, W_dec, b_dec (`init_state`: parameters and
  registered buffers, so that they travel in the state_dict);
- its encode, through the backend's ops (`forward`, `encode`, `encode_sparse`), and the
  same computed from one shard's latents (`sharded_forward`);
- its training loss terms (`train_terms`);
- its SAELens cfg mapping (`saelens_name`, `aliases`, `saelens_fields`, `from_saelens`).

Architectures are stateless classes; the SAE module holds `arch` and the tensors. Adding
one is a module under `sae_fast/architectures/`, its tests, and one line in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from torch import Tensor

from ..errors import ConfigError
from ..ops import reference as ref
from ..output import SAEOutput
from ..validate import check_fields, check_int, train_field
from .losses import auxk

if TYPE_CHECKING:
    from ..config import SAEConfig, TrainConfig
    from ..sae import SparseAutoencoder
    from ..training.sharded import Shard


class TrainState(Protocol):
    """What `train_terms` reads of a training run (the Trainer provides it)."""

    cfg: TrainConfig
    sae: SparseAutoencoder
    shard: Shard
    step: int
    since_fired: Tensor


class Architecture:
    """One SAE architecture (see the module docstring). Subclasses set the class
    attributes and override what differs; the defaults describe a dense code."""

    name: ClassVar[str]  # sae_fast's name: cfg.activation, `--activation`
    saelens_name: ClassVar[str]  # the `architecture` SAELens writes in cfg.json
    aliases: ClassVar[tuple[str, ...]] = ()  # other names accepted for it
    summary: ClassVar[str] = ""  # one line for `--help`
    uses_k: ClassVar[bool] = False  # needs cfg.k
    # its selection spans the batch, so data parallel must see all of it
    batch_wide: ClassVar[bool] = False
    latent_params: ClassVar[tuple[str, ...]] = ()  # its per-latent parameters ([d_sae] each)
    saelens_tensor_names: ClassVar[dict[str, str]] = {}  # ours -> SAELens's, where they differ
    option_names: ClassVar[tuple[str, ...]] = ()  # the cfg.options keys it reads
    # SAELens's cfg of it may set rescale_acts_by_decoder_norm (folded on load)
    saelens_rescales: ClassVar[bool] = False
    # its training settings: dataclasses whose fields TrainConfig (and `sae-fast train`) take
    train_configs: ClassVar[tuple[type, ...]] = ()

    # ---------------------------------------------------------------- config and state
    @classmethod
    def validate(cls, cfg: SAEConfig) -> None:
        """Check (and normalise) the config fields this architecture reads; ConfigError."""
        unknown = sorted(set(cfg.options) - set(cls.option_names))
        if unknown:
            raise ConfigError(
                f"activation {cls.name!r} takes options {list(cls.option_names)}, got {unknown}"
            )
        if not cls.uses_k:
            cfg.k = None
            return
        if cfg.k is None:
            raise ConfigError(f"activation {cls.name!r} needs k")
        check_int("k", cfg.k, 1)
        if cfg.k > cfg.d_sae:
            raise ConfigError(f"k must be <= d_sae ({cfg.d_sae}), got {cfg.k}")

    @classmethod
    def init_state(cls, sae: SparseAutoencoder) -> None:
        """Register the parameters and buffers beyond the four every SAE has."""

    @classmethod
    def inference_threshold(cls, sae: SparseAutoencoder) -> float | None:
        """A batch-wide selection's inference threshold (None: not estimated, or none)."""
        return None

    @classmethod
    def set_inference_threshold(cls, sae: SparseAutoencoder, value: float | None) -> None:
        """Set (None: clear) that threshold; ConfigError for an architecture without one."""
        if value is not None:
            raise ConfigError(f"a {cls.name} SAE has no batchtopk_threshold")

    # ---------------------------------------------------------------- encode
    @classmethod
    def encode(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> Tensor:
        """Dense code `[B, d_sae]` of 2-D `x`."""
        raise NotImplementedError

    @classmethod
    def encode_sparse(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> ref.SparseCode:
        """(values, indices) of 2-D `x`; for a dense code each row's non-zeros, zero-padded
        to the batch's largest L0."""
        return ref.dense_to_sparse(cls.encode(sae, x, ops))

    @classmethod
    def forward(cls, sae: SparseAutoencoder, x: Tensor, ops: Any) -> SAEOutput:
        """Encode and decode 2-D `x`."""
        acts = cls.encode(sae, x, ops)
        recon = ops.decode_dense(acts, sae.W_dec, sae.b_dec)
        return SAEOutput(recon, feature_acts=acts, d_sae=sae.d_sae)

    @staticmethod
    def dense_output(sae: SparseAutoencoder, acts: Tensor, shard: Shard, ops: Any) -> SAEOutput:
        """SAEOutput of this shard's dense code `acts`: the full reconstruction, every
        shard's partial decode summed (shard 0 adds b_dec). `ops`: a backend, or the
        reference module for the training paths that need autograd through torch."""
        recon = shard.sum(ops.decode_dense(acts, sae.W_dec, shard.decoder_bias(sae.b_dec)))
        return SAEOutput(recon, feature_acts=acts, d_sae=shard.size)

    @classmethod
    def sharded_forward(
        cls, sae: SparseAutoencoder, x: Tensor, shard: Shard, ops: Any
    ) -> SAEOutput:
        """`forward` of the whole SAE computed from the latents of one shard (`sae` holds
        them): the full reconstruction, this shard's code."""
        raise ConfigError(f"activation {cls.name!r} cannot be trained feature-sharded")

    # ---------------------------------------------------------------- training
    @classmethod
    def train_forward(cls, sae: SparseAutoencoder, x: Tensor, shard: Shard) -> SAEOutput:
        """The forward of a training step (2-D `x`; no skip term, which the trainer moves
        into the target): `forward`, or `sharded_forward` when this rank holds one shard
        of the latents or (for a batch-wide selection) one replica's rows."""
        if shard.count == 1 and (shard.replicas == 1 or not cls.batch_wide):
            return cls.forward(sae, x, sae.ops())
        return cls.sharded_forward(sae, x, shard, sae.ops())

    @classmethod
    def train_terms(
        cls, run: TrainState, x: Tensor, target: Tensor
    ) -> tuple[SAEOutput, dict[str, Tensor]]:
        """The training forward of input batch `x` and this architecture's loss terms
        besides the MSE to `target` (which the trainer adds), each already weighted.
        `target` is what the SAE's output (without a skip term) should match: `x` for an
        SAE, the target activations (less `x @ W_skip.T`, for a skip transcoder) else."""
        return cls.train_forward(run.sae, x, run.shard), {}

    @classmethod
    def train_options(cls, cfg: TrainConfig, d_sae: int) -> dict[str, Any]:
        """cfg.options of the SAE a run with `cfg` trains (`d_sae`: the whole dictionary)."""
        return {}

    @classmethod
    def init_training(cls, sae: SparseAutoencoder, cfg: TrainConfig) -> None:
        """Set this architecture's own state from the training config, before step 0."""

    @classmethod
    def after_step(cls, sae: SparseAutoencoder) -> None:
        """Projection after each optimiser step (e.g. keep a threshold >= 0)."""

    @classmethod
    def after_update(
        cls, run: TrainState, x: Tensor, out: SAEOutput, group: Any
    ) -> dict[str, float]:
        """After each optimiser step, with the step's input `x` and forward `out`: training
        state updates that read the batch (TopK revives silent latents); `group` is the
        run's `distributed.Group`. Returns logs for the step."""
        return {}

    # ---------------------------------------------------------------- SAELens
    @classmethod
    def fold_input_bias(cls, tensors: dict[str, Tensor]) -> None:
        """Rewrite, in place, the tensors of an SAE that does not subtract b_dec from its
        input (SAELens `apply_b_dec_to_input: false`) into ours, which does: exact."""
        tensors["b_enc"] = ref.fold_input_bias(tensors["W_enc"], tensors["b_enc"], tensors["b_dec"])

    @classmethod
    def saelens_architecture(cls, sae: SparseAutoencoder) -> str:
        """The `architecture` written to cfg.json (the form SAELens loads it in)."""
        return cls.saelens_name

    @classmethod
    def saelens_forms(cls) -> tuple[str, ...]:
        """Every `architecture` value a file of this architecture may carry."""
        return (cls.name, cls.saelens_name, *cls.aliases)

    @classmethod
    def saelens_tensors(cls, sae: SparseAutoencoder) -> dict[str, Tensor]:
        """The tensors written to sae_weights.safetensors, under SAELens's names."""
        rename = cls.saelens_tensor_names
        return {rename.get(n, n): p.detach() for n, p in sae.named_parameters()}

    @classmethod
    def tensors_from_saelens(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """The inverse of `saelens_tensors`: SAELens's tensors under our names."""
        ours = {v: k for k, v in cls.saelens_tensor_names.items()}
        return {ours.get(n, n): t for n, t in tensors.items()}

    @classmethod
    def saelens_fields(cls, sae: SparseAutoencoder) -> dict[str, Any]:
        """Architecture fields of SAELens's cfg.json, beyond d_in, d_sae and dtype."""
        return {"k": sae.k} if cls.uses_k else {}

    @classmethod
    def from_saelens(cls, raw: dict[str, Any], where: str) -> dict[str, Any]:
        """SAEConfig fields read from a SAELens cfg.json (`where` names it in errors)."""
        if not cls.uses_k:
            return {}
        if "k" not in raw:
            raise ConfigError(f"{where} is missing the key 'k' ({cls.saelens_name!r} needs it)")
        k = raw["k"]
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise ConfigError(f"{where}: 'k' must be int/float, got {type(k).__name__} {k!r}")
        if isinstance(k, float) and not k.is_integer():
            raise ConfigError(f"{where}: k={k} is fractional; sae_fast needs an integer k")
        return {"k": int(k)}


AUXK_ROWS = 1024  # AuxK's estimate takes at most this many rows of a batch (its cost)


@dataclass
class AuxKTraining:
    """Training settings of the AuxK term (topk, batchtopk, matryoshka_batchtopk)."""

    auxk_coefficient: float = train_field(
        1 / 8, "topk, batchtopk, matryoshka: AuxK weight (measured on topk: training/recipe.py)"
    )
    auxk_after_tokens: int | None = train_field(
        None, "topk, batchtopk, matryoshka: AuxK trains the latents silent for this many "
        "tokens (default: topk, 42 average firing intervals of d_sae / k tokens, at most the "
        "revival window and --dead-after-tokens; the others, --dead-after-tokens)",
    )  # fmt: skip

    @staticmethod
    def check(cfg: Any) -> None:
        """ConfigError naming a bad field."""
        check_fields(cfg, AuxKTraining)
        if cfg.auxk_after_tokens is not None:
            check_int("auxk_after_tokens", cfg.auxk_after_tokens, 1)


@dataclass
class ReviveTraining:
    """Training settings of silent-latent revival (topk; sae_fast/training/revive.py)."""

    revive_after_tokens: int | None = train_field(
        None, "topk: a latent silent for this many tokens gets b_enc raised so that it would "
        "have fired on its --revive-rows best rows of the step's batch (default: max(42, "
        "tokens / 12288) average firing intervals of d_sae / k tokens; 0: off)",
    )  # fmt: skip
    revive_rows: int = train_field(4, "topk: rows of the batch a revived latent would fire on")

    @staticmethod
    def check(cfg: Any) -> None:
        """ConfigError naming a bad field."""
        if cfg.revive_after_tokens is not None:
            check_int("revive_after_tokens", cfg.revive_after_tokens, 0)
        check_int("revive_rows", cfg.revive_rows, 1)


def auxk_term(
    run: TrainState, x: Tensor, target: Tensor, recon: Tensor, revives: bool = False
) -> dict[str, Tensor]:
    """The AuxK term of TopK-style architectures (Gao et al.), weighted; empty when off. It
    trains the latents silent for `recipe.auxk_window` tokens (`revives`: the architecture
    revives silent latents, so AuxK starts before revival does)."""
    from ..training.recipe import auxk_window

    cfg, sae = run.cfg, run.sae
    if not cfg.auxk_coefficient:
        return {}
    dead = run.since_fired >= auxk_window(cfg, run.shard.d_sae, revives)
    if x.shape[0] > AUXK_ROWS:  # the batch's rows come shuffled: its first ones are a sample
        x, target, recon = x[:AUXK_ROWS], target[:AUXK_ROWS], recon[:AUXK_ROWS]
    term = auxk(x, target, recon, sae.W_enc, sae.b_enc, sae.W_dec, sae.input_bias, dead, run.shard)
    return {"auxk": cfg.auxk_coefficient * term}
