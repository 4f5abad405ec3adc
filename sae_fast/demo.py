"""`make demo`: the whole idea on synthetic data that needs no download.

Trains a TopK SAE on a toy model of superposition (512 sparse ground-truth features packed
into 64 dims) and prints how many true directions it recovered. The transformer pipeline
on the embedded MiniLM model replaces this once the trainer lands.
"""

from __future__ import annotations

import argparse
import time

import torch

from .data.synthetic import ToySuperposition, recovered_fraction
from .sae import SparseAutoencoder
from .train.basic import fit


def main(argv: list[str] | None = None) -> int:
    """Run the synthetic demo; returns the process exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=512, help="true features (default 512)")
    p.add_argument("--dim", type=int, default=64, help="activation width d_in (default 64)")
    p.add_argument("--expansion", type=int, default=2, help="d_sae / features (default 2)")
    p.add_argument("--k", type=int, default=6, help="TopK k (default 6)")
    p.add_argument("--steps", type=int, default=2000, help="Adam steps (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default="demo_out/toy_sae", help="where to save the SAE")
    args = p.parse_args(argv)

    # The toy's generator must not share the global seed, or the SAE's random init would
    # draw exactly the true directions.
    toy = ToySuperposition.make(
        args.features, args.dim, active_per_sample=4.0, seed=args.seed + 12345
    )
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    sae = SparseAutoencoder(args.dim, args.features * args.expansion, activation="topk", k=args.k)
    print(f"toy model: {args.features} features in {args.dim} dims; SAE {sae}")
    t0 = time.perf_counter()
    losses = fit(sae, lambda b: toy.sample(b, gen), args.steps, batch_size=1024, lr=3e-3)
    elapsed = time.perf_counter() - t0
    frac = recovered_fraction(sae.W_dec, toy.directions)
    x = toy.sample(4096, gen)
    with torch.no_grad():
        err = (sae(x).reconstruction - x).pow(2).sum()
    fvu = float(err / (x - x.mean(0)).pow(2).sum())
    print(
        f"trained {args.steps} steps in {elapsed:.1f}s (backend {sae.active_backend}); "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; FVU {fvu:.3f}"
    )
    print(f"recovered {frac:.1%} of the {args.features} true directions at cosine > 0.9")
    sae.save(args.out)
    print(f"saved to {args.out}")
    return 0 if frac >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
