"""Reconstruction and sparsity metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from sae_fast import FormatError, SparseAutoencoder
from sae_fast.eval.metrics import (
    SPARSITY_FILE,
    ReconstructionStats,
    density_histogram,
    load_sparsity,
    reconstruction_metrics,
    save_sparsity,
)
from sae_fast.output import SAEOutput

X = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
X_HAT = torch.tensor([[1.0, 1.0], [3.0, 4.0], [4.0, 0.0]])
# A topk code over d_sae=4: row 0 fires f0; row 1 fires f2 and f0; row 2 nothing.
VALUES = torch.tensor([[2.0, 0.0], [1.0, 3.0], [0.0, 0.0]])
INDICES = torch.tensor([[0, 1], [2, 0], [3, 1]])


def _by_hand():
    # squared errors per token: 1, 0, 1; per-dim mean (3, 2); centred squares 4 + 4 + 8 = 16
    cos0 = 3 / math.sqrt(10)
    return {
        "n_tokens": 3,
        "mse": 2 / 3,
        "fvu": 2 / 16,  # not 2 / 55 (the uncentred second moment)
        "explained_variance": 1 - 2 / 16,
        "cosine": (cos0 + 1 + 1) / 3,
        "l2_ratio": (math.sqrt(2 / 5) + 1 + 4 / 5) / 3,
        "l0": 1.0,
        "dead_fraction": 0.5,  # f1 (only zero values) and f3
        "dense_fraction": 0.5,  # f0 (2/3) and f2 (1/3) fire on > 10%
    }


@pytest.mark.parametrize("split", [[3], [2, 1], [1, 1, 1]])
@pytest.mark.parametrize("code", ["sparse", "dense"])
def test_metrics_match_hand_values_in_any_chunking(split, code):
    stats = ReconstructionStats(d_in=2, d_sae=4)
    r0 = 0
    for n in split:
        sl = slice(r0, r0 + n)
        if code == "sparse":
            out = SAEOutput(X_HAT[sl], values=VALUES[sl], indices=INDICES[sl], d_sae=4)
        else:
            dense = torch.zeros(3, 4).scatter_add_(1, INDICES, VALUES)
            out = SAEOutput(X_HAT[sl], feature_acts=dense[sl], d_sae=4)
        stats.update(X[sl], out)
        r0 += n
    m = stats.result()
    for name, want in _by_hand().items():
        assert getattr(m, name) == pytest.approx(want, rel=1e-12), name
    torch.testing.assert_close(m.density, torch.tensor([2 / 3, 0, 1 / 3, 0], dtype=torch.float64))


def test_fvu_survives_a_large_common_offset():
    stats = ReconstructionStats(d_in=2, d_sae=4)
    offset = 1e6
    stats.update(X + offset, SAEOutput(X_HAT + offset, values=VALUES, indices=INDICES, d_sae=4))
    assert stats.result().fvu == pytest.approx(2 / 16, rel=1e-6)


def test_no_tokens_is_an_error():
    with pytest.raises(ValueError, match="no tokens"):
        ReconstructionStats(2, 4).result()


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_reconstruction_metrics_of_an_sae_equal_the_direct_formulas(activation):
    torch.manual_seed(0)
    sae = SparseAutoencoder(8, 24, activation=activation, k=5, dtype=torch.float64)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    x = torch.randn(50, 8, dtype=torch.float64) * 3 + 1
    m = reconstruction_metrics(sae, x, chunk=7)
    xh = sae(x).reconstruction.detach().double()
    xd = x.double()
    acts = sae.encode(x).detach()
    assert m.mse == pytest.approx(float((xd - xh).pow(2).sum(1).mean()), rel=1e-9)
    assert m.fvu == pytest.approx(
        float((xd - xh).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum()), rel=1e-9
    )
    cos = torch.nn.functional.cosine_similarity(xd, xh, dim=1).mean()
    assert m.cosine == pytest.approx(float(cos), rel=1e-9)
    assert m.l0 == pytest.approx(float((acts != 0).sum(1).double().mean()), rel=1e-12)
    fired = (acts != 0).any(0)
    assert m.dead_fraction == pytest.approx(float((~fired).double().mean()))


def test_density_histogram_bins_and_dead_count():
    h = density_histogram(torch.tensor([0.0, 1e-8, 1e-3, 0.5, 1.0, 0.0]))
    assert h["dead"] == 2
    assert len(h["counts"]) == len(h["edges"]) - 1 == 14
    assert sum(h["counts"]) == 4
    idx = {round(e, 1): i for i, e in enumerate(h["edges"][:-1])}
    assert h["counts"][idx[-7.0]] == 1  # 1e-8 clamps into the first bin
    assert h["counts"][idx[-3.0]] == 1
    assert h["counts"][idx[-0.5]] == 2  # 0.5 and 1.0 (the last bin is closed)


def test_sparsity_file_has_saelens_name_key_and_values(tmp_path):
    from safetensors.torch import load_file

    density = torch.tensor([0.0, 1e-3, 0.25, 1.0], dtype=torch.float64)
    path = save_sparsity(tmp_path, density)
    assert path == tmp_path / SPARSITY_FILE
    raw = load_file(str(path))
    assert list(raw) == ["sparsity"]
    torch.testing.assert_close(raw["sparsity"], torch.tensor([-10.0, -3.0, math.log10(0.25), 0.0]))
    torch.testing.assert_close(load_sparsity(tmp_path), density, rtol=1e-5, atol=1e-9)
    assert [p.name for p in tmp_path.iterdir()] == [SPARSITY_FILE]  # no temp file left
    path.write_bytes(b"garbage")
    with pytest.raises(FormatError, match="truncated or corrupt"):
        load_sparsity(tmp_path)
