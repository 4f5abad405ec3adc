"""What the train and memory suites time: one TopK SAE training step (forward, backward,
Adam) in each implementation, all starting from the same weights and fed the same data.

Every implementation is an `Impl`: it builds its module from one shared state dict (in
sae_fast's layout: `W_enc [d_in, d_sae]`, `b_enc`, `W_dec [d_sae, d_in]`, `b_dec`), returns
the loss (squared error summed over d_in, averaged over tokens), and hands its gradients
back in that layout, so `check` can compare them with the reference (`reference_gradients`)
before anything is timed. Peer libraries (sparsify, SAELens) are in `benchmarks/peers/adapters.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .common import Shape, rel_err

Step = Callable[[], None]


def initial_state(shape: Shape, device: str, seed: int = 0) -> dict[str, Tensor]:
    """sae_fast's own initialisation (unit-norm decoder rows, W_enc = W_dec^T) plus small
    random biases, so a misplaced bias in any implementation fails the check."""
    from sae_fast import SparseAutoencoder

    torch.manual_seed(seed)
    sae = SparseAutoencoder(shape.d_in, shape.d_sae, k=shape.k, backend="torch")
    state = {n: p.detach().clone() for n, p in sae.state_dict().items()}
    state["b_enc"] = 0.01 * torch.randn(shape.d_sae)
    state["b_dec"] = 0.1 * torch.randn(shape.d_in)
    return {n: t.to(device=device, dtype=shape.torch_dtype) for n, t in state.items()}


def loss_of(recon: Tensor, x: Tensor) -> Tensor:
    """The training objective every implementation is timed on (fp32 accumulation)."""
    return (recon.float() - x.float()).pow(2).sum(-1).mean()


class Impl:
    """A TopK SAE implementation under test (see the module docstring)."""

    name = "?"

    def parameters(self) -> list[Tensor]:
        raise NotImplementedError

    def loss(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def grads(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def encode(self, x: Tensor) -> object:
        """Inference encode of `x`, as the library's users call it (no gradients)."""
        raise NotImplementedError


class SaeFast(Impl):
    """`sae_fast.SparseAutoencoder`, on `backend` ("auto": native on CPU, Triton on CUDA;
    "torch": reference TopK with an embedding_bag decode)."""

    def __init__(
        self, shape: Shape, state: dict[str, Tensor], backend: str = "auto", name: str = ""
    ):
        from sae_fast import SparseAutoencoder

        dev = state["W_enc"].device
        self.name = name or f"sae_fast[{backend}]"
        self.sae = SparseAutoencoder(
            shape.d_in, shape.d_sae, k=shape.k, backend=backend, dtype=shape.dtype, device=dev
        )
        self.sae.load_state_dict(state)

    def parameters(self) -> list[Tensor]:
        return list(self.sae.parameters())

    def loss(self, x: Tensor) -> Tensor:
        return loss_of(self.sae(x).reconstruction, x)

    def grads(self) -> dict[str, Tensor]:
        return {n: p.grad for n, p in self.sae.named_parameters()}

    def encode(self, x: Tensor) -> object:
        return self.sae.encode_sparse(x)


def dense_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int) -> Tensor:
    """TopK codes `[B, d_sae]` as a plain dense implementation computes them: all the
    pre-activations, `torch.topk`, and the ReLU'd values scattered into zeros. No tie rule
    (the reference's lower-index fallback and canonical sort cost work a dense baseline
    would not do); ties are rare in fp32, so checks compare codes, reconstructions and
    gradients by relative error, never indices."""
    pre = (x - b_dec) @ W_enc + b_enc  # [B, d_sae]
    vals, idx = torch.topk(pre, k, dim=-1)  # [B, k]
    return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))  # [B, d_sae]


class DenseReference(SaeFast):
    """docs/design.md section 3 written densely: `[B, d_sae]` codes from `dense_topk`,
    `acts @ W_dec + b_dec`, and the dense backward GEMMs autograd derives from it;
    `compile=True` wraps it in torch.compile."""

    def __init__(self, shape: Shape, state: dict[str, Tensor], compile: bool = False):
        super().__init__(shape, state, backend="torch")
        self.name = "torch.compile(dense)" if compile else "dense reference"
        sae = self.sae

        def recon(x: Tensor) -> Tensor:
            acts = dense_topk(x, sae.W_enc, sae.b_enc, sae.b_dec, shape.k)  # [B, d_sae]
            return acts @ sae.W_dec + sae.b_dec  # [B, d_in]

        self._recon = torch.compile(recon) if compile else recon

    def loss(self, x: Tensor) -> Tensor:
        return loss_of(self._recon(x), x)

    def encode(self, x: Tensor) -> object:
        s = self.sae
        return dense_topk(x, s.W_enc, s.b_enc, s.b_dec, s.k)


def make_impl(name: str, shape: Shape, state: dict[str, Tensor], backend: str = "auto") -> Impl:
    """Build the implementation called `name` (see `IMPLS`); `backend` is sae_fast's (auto:
    native on CPU, Triton on CUDA; "triton" on CPU runs in the Triton interpreter)."""
    if name == "sae_fast":
        return SaeFast(shape, state, backend=backend, name="sae_fast")
    if name == "sae_fast[torch]":
        return SaeFast(shape, state, backend="torch")
    if name == "dense":
        return DenseReference(shape, state)
    if name == "compile":
        return DenseReference(shape, state, compile=True)
    if name in PEERS:
        from .peers import adapters

        return adapters.make(name, shape, state)
    raise SystemExit(f"unknown implementation {name!r}; known: {', '.join(IMPLS)}")


OURS = ("sae_fast", "sae_fast[torch]", "dense", "compile")
PEERS = ("sparsify", "saelens")
IMPLS = OURS + PEERS


def make_step(impl: Impl, x: Tensor) -> Step:
    """One optimisation step: zero the grads, loss, backward, Adam (fused where torch has
    it for the device; the same optimiser for every implementation)."""
    opt = torch.optim.Adam(impl.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        impl.loss(x).backward()
        opt.step()

    return step


def gradients(impl: Impl, x: Tensor) -> tuple[float, dict[str, Tensor]]:
    """(loss, gradients in sae_fast's layout) of one backward pass on `x`."""
    for p in impl.parameters():
        p.grad = None
    loss = impl.loss(x)
    loss.backward()
    return float(loss.detach()), {n: g.detach().float() for n, g in impl.grads().items()}


def reference_gradients(
    shape: Shape, state: dict[str, Tensor], x: Tensor
) -> tuple[float, dict[str, Tensor]]:
    """What every implementation is checked against: loss and gradients of
    `sae_fast.ops.reference`'s TopK (lower index wins a tie) under autograd, which is
    sae_fast on its torch backend."""
    return gradients(make_impl("sae_fast[torch]", shape, state), x)


PLAIN_TOPK = ("dense", "compile")  # `dense_topk`: torch.topk with no tie rule


def check_impl(
    name: str, impl: Impl, shape: Shape, state: dict[str, Tensor], x: Tensor, want: tuple
) -> float:
    """`check` of `impl` (built by `make_impl(name, ...)`) against `want`. The plain-topk
    dense baselines are checked in fp32 when timed in bf16/fp16: there most rows tie at the
    k-th pre-activation and torch.topk may keep any of the tied features, a different but
    equally valid code, so no gradient comparison holds; their code has no dtype-specific
    path, and in fp32 ties are rare."""
    if name not in PLAIN_TOPK or shape.dtype == "float32":
        return check(impl, x, want, tolerance(shape.dtype))
    shape32 = shape.with_(dtype="float32")
    state32 = {n: t.float() for n, t in state.items()}
    want32 = reference_gradients(shape32, state32, x.float())
    return check(make_impl(name, shape32, state32), x.float(), want32, tolerance("float32"))


def check(impl: Impl, x: Tensor, want: tuple[float, dict[str, Tensor]], tol: float) -> float:
    """Largest relative error (in norm) of `impl`'s loss and gradients against `want`;
    raises when it is over `tol`."""
    loss, grads = gradients(impl, x)
    want_loss, want_grads = want
    errs = {"loss": abs(loss - want_loss) / max(abs(want_loss), 1e-12)}
    for n, g in want_grads.items():
        errs[n] = rel_err(grads[n], g)
    worst = max(errs, key=errs.get)
    if not errs[worst] <= tol:  # also catches NaN
        raise SystemExit(
            f"{impl.name} disagrees with the reference: relative error of {worst} "
            f"{errs[worst]:.2e} > {tol:.0e}"
        )
    for p in impl.parameters():
        p.grad = None
    return errs[worst]


def tolerance(dtype: str) -> float:
    """Allowed relative error of loss and gradients against the reference."""
    return 1e-3 if dtype == "float32" else 5e-2
