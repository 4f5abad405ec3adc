"""sae_fast benchmarks: each checks its result against `sae_fast.ops.reference` first."""
