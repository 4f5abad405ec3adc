"""Round trips with SAELens itself, both ways: `make saelens-interop` runs the three steps.

    python tests/formats/saelens_interop.py ours DIR     # sae_fast writes DIR/ours/<case>
    python tests/formats/saelens_interop.py saelens DIR  # SAELens (its own venv) loads those
                                                         # and writes DIR/theirs/<case>
    python tests/formats/saelens_interop.py theirs DIR   # sae_fast loads SAELens's

Each case directory holds an SAE (cfg.json, sae_weights.safetensors) and `io.safetensors`:
an input `x` and what its writer computed from it (`acts` = encode(x), `decoded` =
decode(acts), `out` = forward(x)). The reader recomputes them and fails on a difference
above 1e-5. The `saelens` step imports SAELens and never sae_fast, so it runs in a venv
with SAELens alone; its cases are also what `tests/fixtures/saelens-<version>/` holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TOL = 1e-5
D_IN, D_SAE, D_OUT, ROWS = 8, 16, 6, 5

# sae_fast constructor arguments of every architecture that should load in SAELens
OURS = {
    "relu": dict(activation="relu"),
    "topk": dict(activation="topk", k=3),
    "jumprelu": dict(activation="jumprelu"),
    "gated": dict(activation="gated"),
    "matryoshka_batchtopk": dict(
        activation="matryoshka_batchtopk", k=3, options={"matryoshka_widths": [4, 8]}
    ),
    "transcoder": dict(activation="relu", transcoder=True, d_out=D_OUT),
    "skip_transcoder": dict(activation="relu", transcoder=True, d_out=D_OUT, skip=True),
    "jumprelu_transcoder": dict(activation="jumprelu", transcoder=True, d_out=D_OUT),
    "jumprelu_skip_transcoder": dict(
        activation="jumprelu", transcoder=True, d_out=D_OUT, skip=True
    ),
}

# SAELens architecture -> its config keyword arguments beyond d_in, d_sae
THEIRS = {
    "standard": {},
    "topk": dict(k=3),
    "jumprelu": {},
    "gated": {},
    "transcoder": dict(d_out=D_OUT),
    "skip_transcoder": dict(d_out=D_OUT),
    "jumprelu_transcoder": dict(d_out=D_OUT),
    "jumprelu_skip_transcoder": dict(d_out=D_OUT),
}


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random, thresholds positive and small (some latents pass, some not)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            t = torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.5
            if name in ("threshold", "log_threshold"):
                t = t.abs() * 0.4
            p.copy_(t.to(p.dtype))


def _inputs(seed: int) -> torch.Tensor:
    return torch.randn(ROWS, D_IN, generator=torch.Generator().manual_seed(100 + seed))


def _check(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    err = float((got.float() - want.float()).abs().max())
    if err > TOL:
        raise AssertionError(f"{name}: max |difference| {err:.3g} > {TOL}")
    return err


def _write_io(path: Path, x: torch.Tensor, acts, decoded, out) -> None:
    tensors = {"x": x, "acts": acts, "decoded": decoded, "out": out}
    save_file(
        {k: v.detach().float().contiguous() for k, v in tensors.items()}, path / "io.safetensors"
    )


def write_ours(root: Path) -> None:
    """sae_fast writes one SAE per architecture of OURS, with its outputs."""
    from sae_fast import SparseAutoencoder

    for seed, (case, kwargs) in enumerate(OURS.items()):
        sae = SparseAutoencoder(D_IN, D_SAE, backend="torch", hook_name="blocks.0.hook_resid_pre",
                                model_name="gpt2", **kwargs)  # fmt: skip
        _randomise(sae, seed)
        if sae.batchtopk_threshold is None and kwargs.get("k") and "matryoshka" in case:
            sae.batchtopk_threshold = 0.3
        sae.eval()
        x = _inputs(seed)
        path = sae.save(root / "ours" / case)
        with torch.no_grad():
            acts = sae.encode(x)
            _write_io(path, x, acts, sae.decode(acts), sae(x).reconstruction)
        print(f"ours    {case:26s} written")


def saelens_step(root: Path) -> None:
    """SAELens loads every one of ours and checks the outputs; then writes its own."""
    import sae_lens
    from sae_lens import SAE
    from sae_lens.registry import get_sae_class

    for case_dir in sorted((root / "ours").iterdir()):
        sae = SAE.load_from_disk(str(case_dir))
        io = load_file(str(case_dir / "io.safetensors"))
        with torch.no_grad():
            acts = sae.encode(io["x"])
            errs = [
                _check(f"{case_dir.name} encode", acts, io["acts"]),
                _check(f"{case_dir.name} decode", sae.decode(io["acts"]), io["decoded"]),
                _check(f"{case_dir.name} forward", sae(io["x"]), io["out"]),
            ]
        print(f"saelens loads ours  {case_dir.name:26s} {type(sae).__name__:24s} "
              f"max err {max(errs):.2g}")  # fmt: skip
    for seed, (arch, kwargs) in enumerate(THEIRS.items()):
        sae_cls, config_cls = get_sae_class(arch)
        cfg = config_cls(d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu",
                         **({"apply_b_dec_to_input": False} if "d_out" in kwargs else {}),
                         **kwargs)  # fmt: skip
        cfg.metadata.model_name = "gpt2"
        cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
        sae = sae_cls(cfg)
        _randomise(sae, 50 + seed)
        x = _inputs(50 + seed)
        path = root / "theirs" / arch
        sae.save_model(str(path))
        with torch.no_grad():
            acts = sae.encode(x)
            _write_io(path, x, acts, sae.decode(acts), sae(x))
        print(f"saelens {sae_lens.__version__} writes {arch}")


def check_theirs(root: Path) -> dict[str, float]:
    """sae_fast loads every SAE SAELens wrote (under `root`/theirs, or `root` itself) and
    checks the outputs; returns each case's largest error."""
    from sae_fast import SparseAutoencoder

    where = root / "theirs" if (root / "theirs").is_dir() else root
    result = {}
    for case_dir in sorted(p for p in where.iterdir() if p.is_dir()):
        sae = SparseAutoencoder.load(case_dir, backend="torch")
        io = load_file(str(case_dir / "io.safetensors"))
        with torch.no_grad():
            errs = [
                _check(f"{case_dir.name} encode", sae.encode(io["x"]), io["acts"]),
                _check(f"{case_dir.name} decode", sae.decode(io["acts"]), io["decoded"]),
                _check(f"{case_dir.name} forward", sae(io["x"]).reconstruction, io["out"]),
            ]
        print(f"sae_fast loads saelens {case_dir.name:26s} as {sae.activation:9s} "
              f"transcoder={sae.cfg.transcoder!s:5s} max err {max(errs):.2g}")  # fmt: skip
        result[case_dir.name] = max(errs)
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("ours", "saelens", "theirs"):
        print(__doc__)
        return 2
    root = Path(argv[2])
    root.mkdir(parents=True, exist_ok=True)
    {"ours": write_ours, "saelens": saelens_step, "theirs": check_theirs}[argv[1]](root)
    (root / f"{argv[1]}.done").write_text(json.dumps({"ok": True}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
