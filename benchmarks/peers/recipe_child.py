"""The peer side of `python -m benchmarks recipe`: one TopK SAE trained by sparsify or SAELens
with the library's own training loop and its own defaults, on the driver's batches.

    benchmarks/peers/.venv/bin/python -m benchmarks.peers.recipe_child SPEC_JSON

(PYTHONPATH = the repository root.) SPEC names the library, the shape (d_in, d_sae, k),
the batch size and steps, and the files: the training rows (`train`, float32 `acts`), the
served order (`order`: the row numbers of every step, back to back, as sae_fast's
MemoryFeed serves them), the held-out rows, and where the weights and the result go. Step
`s` trains on `acts[order[s * batch:(s + 1) * batch]]` in every library. The weights are
written as {W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec} for raw activations,
the result as JSON: train seconds (the trainer built and run; the final export not counted),
the library's recipe as run, and `check_err`, the relative difference between the
library's own inference forward and the common TopK forward of the exported weights on
held-out rows.

sparsify 1.3.3: its own `Trainer(cfg, dataset, model).fit()`, driven through a stand-in model.
The model's one submodule (`rows`) returns the activation rows of the token positions it is
given; the dataset holds the positions 0 .. steps * batch - 1 in order, as sequences of
`seq` tokens (`seq` = gcd(batch, 256)), and `TrainConfig.batch_size` = batch / seq sequences,
so each of its steps hooks exactly one of our batches (sparsify does not shuffle; its
docstring asks for a pre-shuffled dataset). All else is its default: the SignSGD optimizer in
a ScheduleFree wrapper (momentum 0.95) with lr 5e-3 / sqrt(num_latents / 2^14), no schedule,
FVU loss (normalised by the batch's variance), auxk_alpha 0 (no AuxK), b_dec set to the
first batch's mean, unit-norm decoder rows (renormalised before each step), the gradient
parallel to the decoder rows removed, W_dec initialised as the encoder's transpose. The
weights are the checkpoint its `fit()` saves at the end, which is ScheduleFree's averaged
(eval-mode) point, as sparsify ships them. Set beyond the task: `hookpoints=["rows"]`,
`log_to_wandb=False`, `save_every` past the last step (no mid-run checkpoint; the final
one is still written), `save_dir`/`run_name` in the work directory.

SAELens 6.54.12: its own `SAETrainer(cfg, sae, data_provider).fit()`, with the data provider an
iterator over our batches. The config is made as its runner makes it:
`LanguageModelSAERunnerConfig(sae=TopKTrainingSAEConfig(d_in, d_sae, k), training_tokens,
train_batch_size_tokens, device="cpu", logger without wandb, no checkpoints, no output)`,
`.to_sae_trainer_config()`, and the SAE from `TrainingSAE.from_dict(...)` as in
`LanguageModelSAETrainingRunner`, after `torch.manual_seed(cfg.seed)` (its runner seeds
nothing; its config's seed, 42, is used). So its defaults hold: Adam lr 3e-4, constant
schedule, no warmup, grad-norm clipping at 1, AuxK (coefficient 1, latents dead after
`dead_feature_window` = 1000 steps without firing), decoder rows initialised at norm 0.1
with W_enc = W_dec^T, b_dec zero, TopK on pre-activations scaled by the decoder norms
(`rescale_acts_by_decoder_norm`), `normalize_activations="none"`. The weights are those of
`save_inference_model` (decoder norms folded in, so plain TopK on raw activations); a
normalisation the trainer folds (`expected_average_only_in`) is folded by `fit()` itself,
and a run-time one (layer_norm, constant_norm_rescale) would be refused here, since the
common forward could not apply it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.recipe import WEIGHTS, load_tensors, rel_err, topk_forward

CHECK_ROWS = 2048


def _export(weights: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({n: weights[n].detach().float().contiguous() for n in WEIGHTS}, str(tmp))
    os.replace(tmp, path)


def _batches(acts: Tensor, order: Tensor, batch: int, steps: int):
    """The driver's batches, in order, each exactly once."""
    for s in range(steps):
        yield acts[order[s * batch : (s + 1) * batch]]


# ----------------------------------------------------------------------------- sparsify


class _Rows(nn.Module):
    """The hooked submodule: token positions [n, seq] -> their activation rows [n, seq, d]."""

    def __init__(self, acts: Tensor, order: Tensor) -> None:
        super().__init__()
        self.acts, self.order = acts, order  # plain attributes: no parameters, no buffers

    def forward(self, positions: Tensor) -> Tensor:
        return self.acts[self.order[positions]]


class _StandIn(nn.Module):
    """What sparsify's Trainer needs of a model: `base_model`, `device`, `dummy_inputs`, and
    a forward through the hooked submodule."""

    def __init__(self, acts: Tensor, order: Tensor, seq: int) -> None:
        super().__init__()
        self.rows = _Rows(acts, order)
        self.dummy_inputs = {"input_ids": torch.zeros(1, seq, dtype=torch.long)}

    @property
    def base_model(self) -> nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.rows(input_ids)


class _Positions:
    """The dataset: sequence i holds the positions i * seq .. (i + 1) * seq - 1."""

    def __init__(self, n_sequences: int, seq: int) -> None:
        self.n, self.seq = n_sequences, seq

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return {"input_ids": torch.arange(i * self.seq, (i + 1) * self.seq)}


def train_sparsify(spec: dict, acts: Tensor, order: Tensor) -> tuple[dict[str, Tensor], dict]:
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # Triton kernels cannot run on CPU
    from sparsify import SaeConfig, SparseCoder, TrainConfig, Trainer

    B, steps = spec["batch"], spec["steps"]
    seq = math.gcd(B, 256)
    work = Path(spec["run_dir"])
    cfg = TrainConfig(
        SaeConfig(expansion_factor=spec["expansion"], k=spec["k"]),
        batch_size=B // seq,
        hookpoints=["rows"],
        log_to_wandb=False,
        save_every=steps + 2,  # never mid-run (it saves when (step + 1) % save_every == 0)
        save_dir=str(work / "sparsify"),
        run_name="run",
    )
    t0 = time.perf_counter()
    trainer = Trainer(cfg, _Positions(steps * B // seq, seq), _StandIn(acts, order, seq))
    trainer.fit()
    seconds = time.perf_counter() - t0
    sae = SparseCoder.load_from_disk(work / "sparsify" / "run" / "rows")  # the shipped weights
    if sae.num_latents != spec["d_sae"]:
        raise SystemExit(f"sparsify made {sae.num_latents} latents, expected {spec['d_sae']}")
    weights = {
        "W_enc": sae.encoder.weight.detach().t(),
        "b_enc": sae.encoder.bias.detach(),
        "W_dec": sae.W_dec.detach(),
        "b_dec": sae.b_dec.detach(),
    }
    held = load_tensors(Path(spec["heldout"]))["acts"][:CHECK_ROWS]
    with torch.no_grad():
        own = sae(held).sae_out
    pg = trainer.optimizers[0].param_groups[0]
    recipe = {
        "optimizer": f"{cfg.optimizer} ({type(trainer.optimizers[0]).__name__})",
        "lr": pg.get("lr"),
        "schedule": "none" if not trainer.lr_schedulers else "linear warmup + decay",
        "loss": cfg.loss_fn,
        "auxk_alpha": cfg.auxk_alpha,
        "dead_feature_threshold": cfg.dead_feature_threshold,
        "normalize_decoder": cfg.sae.normalize_decoder,
        "sequences per step": f"{B // seq} x {seq} tokens",
    }
    check = rel_err(topk_forward(weights, held, spec["k"])[0], own)
    return weights, {"train_s": seconds, "check_err": check, "recipe": recipe}


# ----------------------------------------------------------------------------- SAELens


class _Provider:
    """SAELens's data provider: an iterator over the driver's batches, counting them."""

    def __init__(self, acts: Tensor, order: Tensor, batch: int, steps: int) -> None:
        self._it = _batches(acts, order, batch, steps)
        self.served = 0

    def __iter__(self) -> _Provider:
        return self

    def __next__(self) -> Tensor:
        x = next(self._it)
        self.served += 1
        return x


def train_saelens(spec: dict, acts: Tensor, order: Tensor) -> tuple[dict[str, Tensor], dict]:
    from sae_lens import SAE, LanguageModelSAERunnerConfig, LoggingConfig, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    B, steps = spec["batch"], spec["steps"]
    work = Path(spec["run_dir"])
    t0 = time.perf_counter()
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=spec["d_in"], d_sae=spec["d_sae"], k=spec["k"]),
        training_tokens=steps * B,
        train_batch_size_tokens=B,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=None,
        verbose=False,
    )
    norm = runner_cfg.sae.normalize_activations
    if norm not in ("none", "expected_average_only_in"):
        raise SystemExit(
            f"SAELens's default normalize_activations={norm!r} runs at inference time; the "
            "common TopK forward cannot apply it"
        )
    torch.manual_seed(runner_cfg.seed)
    sae = TrainingSAE.from_dict(
        TrainingSAEConfig.from_dict(runner_cfg.get_training_sae_cfg_dict()).to_dict()
    )
    sae.to(runner_cfg.device)
    provider = _Provider(acts, order, B, steps)
    trainer = SAETrainer(cfg=runner_cfg.to_sae_trainer_config(), sae=sae, data_provider=provider)
    sae = trainer.fit()
    seconds = time.perf_counter() - t0
    if provider.served != steps:
        raise SystemExit(f"SAELens drew {provider.served} batches, expected {steps}")
    out = work / "saelens"
    sae.save_inference_model(out)
    state = load_tensors(out / "sae_weights.safetensors")
    weights = {n: state[n] for n in WEIGHTS}
    inference = SAE.load_from_disk(str(out), device="cpu")
    held = load_tensors(Path(spec["heldout"]))["acts"][:CHECK_ROWS]
    with torch.no_grad():
        own = inference(held)
    tc, sc = trainer.cfg, runner_cfg.sae
    recipe = {
        "optimizer": f"Adam ({tc.adam_beta1}, {tc.adam_beta2})",
        "lr": tc.lr,
        "schedule": f"{tc.lr_scheduler_name}, warmup {tc.lr_warm_up_steps} steps",
        "grad_clip": 1.0,
        "aux_loss_coefficient": sc.aux_loss_coefficient,
        "dead_feature_window (steps)": tc.dead_feature_window,
        "decoder_init_norm": sc.decoder_init_norm,
        "rescale_acts_by_decoder_norm": sc.rescale_acts_by_decoder_norm,
        "normalize_activations": norm,
    }
    check = rel_err(topk_forward(weights, held, spec["k"])[0], own)
    return weights, {"train_s": seconds, "check_err": check, "recipe": recipe}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m benchmarks.peers.recipe_child SPEC_JSON")
    spec = json.loads(args[0])
    train = {"sparsify": train_sparsify, "saelens": train_saelens}.get(spec["lib"])
    if train is None:
        raise SystemExit(f"unknown peer library {spec['lib']!r}")
    acts = load_tensors(Path(spec["train"]))["acts"]
    order = load_tensors(Path(spec["order"]))["order"]
    if len(order) != spec["batch"] * spec["steps"]:
        raise SystemExit(f"the order holds {len(order)} rows, not batch x steps")
    weights, info = train(spec, acts, order)
    _export(weights, Path(spec["weights"]))
    result = Path(spec["result"])
    tmp = result.with_name(f".{result.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    os.replace(tmp, result)
    print(f"{spec['lib']}: trained in {info['train_s']:.1f} s; check_err {info['check_err']:.1e}")


if __name__ == "__main__":
    main()
