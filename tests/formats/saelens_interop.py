"""Round trips with SAELens itself, both ways: `make saelens-interop` runs the three steps.

    python tests/formats/saelens_interop.py ours DIR     # sae_fast writes DIR/ours/<case>
    python tests/formats/saelens_interop.py saelens DIR  # SAELens (its own venv) loads those
                                                         # and writes DIR/theirs/<case>
    python tests/formats/saelens_interop.py theirs DIR   # sae_fast loads SAELens's

    python tests/formats/saelens_interop.py back DIR     # sae_fast saves each of theirs
                                                         # again, to DIR/back/<case>
    python tests/formats/saelens_interop.py saelens-back DIR  # SAELens loads those

SAELens's cases cover every inference architecture and the options sae_fast honours
(OPTIONS): decoder-norm rescaling, the four input normalisations, and what SAELens's own
trainers save (TopK, BatchTopK and Matryoshka via save_inference_model). Where SAELens's
inference class does not run a normalisation itself (expected_average_only_in,
covariance_whitening: its trainer and from_pretrained fold them), `io` holds the outputs of
SAELens's SAE after SAELens's own fold, and the directory holds the statistics its trainer
writes next to a checkpoint (activation_scaler.json, activation_whitening.safetensors).

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
    "abstopk": dict(activation="abstopk", k=3),
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
    "abstopk": dict(k=3),
}


# SAELens cases beyond the plain architectures: name -> (architecture, config kwargs, how
# SAELens writes it). "model": SAE.save_model; "trained": the training class's
# save_inference_model; "scaled"/"whitened": save_model plus the checkpoint statistics.
OPTIONS = {
    "topk_rescale": ("topk", dict(k=3, rescale_acts_by_decoder_norm=True), "model"),
    "topk_trained": ("topk", dict(k=3, rescale_acts_by_decoder_norm=True), "trained"),
    "batchtopk_trained": ("batchtopk", dict(k=3.0, rescale_acts_by_decoder_norm=True), "trained"),
    "matryoshka_trained": (
        "matryoshka_batchtopk",
        dict(k=3.0, rescale_acts_by_decoder_norm=True, matryoshka_widths=[4, D_SAE]),
        "trained",
    ),
    "standard_constant_norm": (
        "standard",
        dict(normalize_activations="constant_norm_rescale"),
        "model",
    ),
    "topk_constant_norm": (
        "topk",
        dict(k=3, rescale_acts_by_decoder_norm=True, normalize_activations="constant_norm_rescale"),
        "model",
    ),
    "jumprelu_layer_norm": ("jumprelu", dict(normalize_activations="layer_norm"), "model"),
    "gated_layer_norm": ("gated", dict(normalize_activations="layer_norm"), "model"),
    "jumprelu_transcoder_layer_norm": (
        "jumprelu_transcoder",
        dict(d_out=D_OUT, apply_b_dec_to_input=False, normalize_activations="layer_norm"),
        "model",
    ),
    "standard_expected_average": (
        "standard",
        dict(normalize_activations="expected_average_only_in"),
        "scaled",
    ),
    "topk_expected_average": (
        "topk",
        dict(
            k=3, rescale_acts_by_decoder_norm=True, normalize_activations="expected_average_only_in"
        ),
        "scaled",
    ),
    "standard_whitening": (
        "standard",
        dict(normalize_activations="covariance_whitening"),
        "whitened",
    ),
    "standard_whitening_no_bdec": (
        "standard",
        dict(apply_b_dec_to_input=False, normalize_activations="covariance_whitening"),
        "whitened",
    ),
    "topk_whitening": (
        "topk",
        dict(k=3, rescale_acts_by_decoder_norm=True, normalize_activations="covariance_whitening"),
        "whitened",
    ),
    "jumprelu_whitening": (
        "jumprelu",
        dict(normalize_activations="covariance_whitening"),
        "whitened",
    ),
    "abstopk_rescale": ("abstopk", dict(k=3, rescale_acts_by_decoder_norm=True), "model"),
}
SCALE = 0.37  # the checkpoints' expected_average_only_in factor


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
    from sae_lens.registry import get_sae_class

    for case_dir in sorted((root / "ours").iterdir()):
        sae, errs = _saelens_checks(case_dir)
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
    for seed, (case, (arch, kwargs, how)) in enumerate(OPTIONS.items()):
        _write_option_case(root / "theirs" / case, arch, dict(kwargs), how, 80 + seed)
        print(f"saelens {sae_lens.__version__} writes {case} ({how})")


def _write_option_case(path: Path, arch: str, kwargs: dict, how: str, seed: int) -> None:
    """One OPTIONS case, written by SAELens as its users' files are, with its io."""
    import copy

    from sae_lens import SAE
    from sae_lens.registry import get_sae_class, get_sae_training_class
    from sae_lens.training.activation_scaler import ActivationScaler

    trained = how == "trained"
    sae_cls, config_cls = (get_sae_training_class if trained else get_sae_class)(arch)
    cfg = config_cls(d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu", **kwargs)
    cfg.metadata.model_name = "gpt2"
    cfg.metadata.hook_name = "blocks.0.hook_resid_pre"
    if "d_out" in kwargs:
        cfg.metadata.hook_name_out = "blocks.0.hook_mlp_out"
    sae = sae_cls(cfg)
    _randomise(sae, seed)
    x = _inputs(seed) * 3 + 1  # norms and means far from 1 and 0
    if trained:
        if hasattr(sae, "topk_threshold"):
            sae.topk_threshold = torch.tensor(0.3, dtype=torch.double)
        sae.save_inference_model(str(path))
        reference = SAE.load_from_disk(str(path))
    else:
        sae.save_model(str(path))
        reference = copy.deepcopy(sae)
        scaler = ActivationScaler()
        if how == "scaled":
            scaler.scaling_factor = SCALE
            reference.fold_activation_norm_scaling_factor(SCALE)
        elif how == "whitened":
            g = torch.Generator().manual_seed(seed)
            mix = torch.randn(D_IN, D_IN, generator=g, dtype=torch.float64) * 0.5
            mix += torch.eye(D_IN, dtype=torch.float64)
            batches = iter([torch.randn(256, D_IN, generator=g, dtype=torch.float64) @ mix + 2
                            for _ in range(4)])  # fmt: skip
            scaler.estimate_whitening(D_IN, batches, n_batches_for_norm_estimate=4)
            # inputs from the whitened distribution: its codes are O(1), as in use
            x = (torch.randn(ROWS, D_IN, generator=g, dtype=torch.float64) @ mix + 2).float()
            w = scaler.whitening
            reference.fold_activation_whitening(w.mean, w.matrix, w.inverse_matrix)
        if how in ("scaled", "whitened"):
            scaler.save(str(path / "activation_scaler.json"))
    reference.eval()
    with torch.no_grad():
        acts = reference.encode(x)
        decoded = reference.decode(acts)  # right after encode: its normalisation's statistics
        _write_io(path, x, acts, decoded, reference(x))


def _saelens_checks(case_dir: Path):
    """SAELens loads `case_dir` and recomputes its io: (the SAE, each check's error). The
    decode follows the encode, as SAELens's runtime normalisations need."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(case_dir))
    io = load_file(str(case_dir / "io.safetensors"))
    with torch.no_grad():
        acts = sae.encode(io["x"])
        return sae, [
            _check(f"{case_dir.name} encode", acts, io["acts"]),
            _check(f"{case_dir.name} decode", sae.decode(acts), io["decoded"]),
            _check(f"{case_dir.name} forward", sae(io["x"]), io["out"]),
        ]


def saelens_back_step(root: Path) -> None:
    """SAELens loads every SAE sae_fast saved again (root/back) and checks the outputs."""
    for case_dir in sorted((root / "back").iterdir()):
        sae, errs = _saelens_checks(case_dir)
        print(f"saelens loads back {case_dir.name:32s} {type(sae).__name__:24s} "
              f"max err {max(errs):.2g}")  # fmt: skip


def write_back(root: Path) -> None:
    """sae_fast saves each SAE it loaded from SAELens again, with the same io."""
    import shutil

    from sae_fast import SparseAutoencoder

    for case_dir in sorted(p for p in (root / "theirs").iterdir() if p.is_dir()):
        sae = SparseAutoencoder.load(case_dir, backend="torch")
        out = sae.save(root / "back" / case_dir.name)
        shutil.copy(case_dir / "io.safetensors", out / "io.safetensors")


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
                _check(
                    f"{case_dir.name} decode", sae.decode(io["acts"], like=io["x"]), io["decoded"]
                ),
                _check(f"{case_dir.name} forward", sae(io["x"]).reconstruction, io["out"]),
            ]
        print(f"sae_fast loads saelens {case_dir.name:32s} as {sae.activation:9s} "
              f"transcoder={sae.cfg.transcoder!s:5s} max err {max(errs):.2g}")  # fmt: skip
        result[case_dir.name] = max(errs)
    return result


def main(argv: list[str]) -> int:
    steps = {"ours": write_ours, "saelens": saelens_step, "theirs": check_theirs,
             "back": write_back, "saelens-back": saelens_back_step}  # fmt: skip
    if len(argv) != 3 or argv[1] not in steps:
        print(__doc__)
        return 2
    root = Path(argv[2])
    root.mkdir(parents=True, exist_ok=True)
    steps[argv[1]](root)
    (root / f"{argv[1]}.done").write_text(json.dumps({"ok": True}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
