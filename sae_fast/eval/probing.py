"""Sparse probing (as SAEBench runs it): can k SAE latents classify what the raw activations
can?

For each task of `data.probe_tasks`, every text runs through the model to the SAE's hook;
its activations (the tokens the SAE's training kept) are mean-pooled into one vector, and
so are the SAE's latent activations. Then, on the train split:

- **k-sparse probe** (k in `KS`): the k latents with the largest |mean(class 1) - mean(class
  0)| are kept, standardised, and a logistic regression is fitted on them;
- **baseline**: a logistic regression on all the standardised raw activations.

Both are fitted with L-BFGS and a small L2 penalty, and scored by accuracy on the test split
(sources the probes never saw). An SAE whose k=20 probe is within 5 points of the baseline
keeps the task's information in few latents.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.activations import iter_activations, token_windows
from ..data.filters import TokenFilter
from ..data.probe_tasks import TASKS, build_task
from ..errors import ConfigError
from ..files import atomic_file
from ..sae import SparseAutoencoder

KS = (1, 2, 5, 20)
PROBE_FILE = "probing.json"


@torch.no_grad()
def pooled(
    sae: SparseAutoencoder,
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    hook: str,
    context_size: int = 128,
    batch_size: int = 16,
) -> tuple[Tensor, Tensor]:
    """Mean-pooled raw activations `[n, d_in]` and SAE latents `[n, d_sae]` of each text
    (its first window of `context_size` tokens)."""
    windows = [token_windows(tokenizer, [t], context_size)[0] for t in texts]
    keep = TokenFilter(**(sae.cfg.metadata.get("token_filter") or {}))
    raw = torch.zeros(len(texts), sae.d_in, dtype=torch.float64)
    lat = torch.zeros(len(texts), sae.d_sae, dtype=torch.float64)
    count = torch.zeros(len(texts), dtype=torch.float64)
    for b in iter_activations(model, tokenizer, windows, hook, batch_size, keep=keep):
        acts = b.acts.to(device=sae.device, dtype=sae.dtype)
        codes = sae.encode(acts).double().cpu()
        raw.index_add_(0, b.window, b.acts.double().cpu())
        lat.index_add_(0, b.window, codes)
        count.index_add_(0, b.window, torch.ones(len(b.window), dtype=torch.float64))
    if (count == 0).any():
        raise ConfigError("a probing text kept no tokens at the hook")
    return (raw / count[:, None]).float(), (lat / count[:, None]).float()


def fit_logistic(x: Tensor, y: Tensor, l2: float = 1e-3, steps: int = 100) -> tuple[Tensor, Tensor]:
    """Weights and bias of an L2-penalised logistic regression (L-BFGS) on `x [n, d]`, 0/1 `y`."""
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    yf = y.float()

    def closure():
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(x @ w + b, yf) + l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mu, sd = train.mean(0), train.std(0).clamp_min(1e-6)
    return (train - mu) / sd, (test - mu) / sd


def probe_accuracy(train: Tensor, y_train: Tensor, test: Tensor, y_test: Tensor) -> float:
    """Test accuracy of a logistic probe fitted on standardised `train`."""
    a, b = _standardise(train, test)
    w, c = fit_logistic(a, y_train)
    return float(((b @ w + c > 0).long() == y_test).float().mean())


def top_k_latents(latents: Tensor, y: Tensor, k: int) -> Tensor:
    """The k latents whose class means differ most (ties to the lower id)."""
    diff = (latents[y == 1].mean(0) - latents[y == 0].mean(0)).abs()
    order = torch.argsort(-diff, stable=True)
    return order[:k]


@dataclass
class TaskResult:
    """One task's accuracies: the raw-activation baseline and the SAE at each k."""

    task: str
    classes: tuple[str, str]
    n_train: int
    n_test: int
    baseline: float
    sae: dict[int, float]
    latents: dict[int, list[int]] = field(default_factory=dict)

    def gap(self, k: int = 20) -> float:
        """Baseline minus the k-sparse probe, in accuracy points (x100)."""
        return 100 * (self.baseline - self.sae[k])


@dataclass
class ProbeReport:
    """Every task's result; `within(5)`: the tasks whose k=20 probe is within 5 points."""

    tasks: list[TaskResult]

    def within(self, points: float = 5.0, k: int = 20) -> list[str]:
        """The tasks whose k-sparse probe is within `points` of the baseline."""
        return [t.task for t in self.tasks if t.gap(k) <= points]

    def mean(self, k: int = 20) -> float:
        """Mean k-sparse accuracy over the tasks."""
        return sum(t.sae[k] for t in self.tasks) / len(self.tasks)

    def table(self) -> str:
        """Accuracy per task and k, with the baseline and the k=20 gap."""
        ks = sorted(self.tasks[0].sae)
        head = f"{'task':<24} {'n':>5}  " + "  ".join(f"k={k:<3}" for k in ks)
        rows = [head + "  raw    gap@20"]
        for t in self.tasks:
            accs = "  ".join(f"{t.sae[k]:.3f}" for k in ks)
            rows.append(f"{t.task:<24} {t.n_test:>5}  {accs}  {t.baseline:.3f}  {t.gap():+.1f}")
        n_ok = len(self.within())
        rows.append(
            f"mean k=20 accuracy {self.mean():.3f}; within 5 points of the raw probe on "
            f"{n_ok} of {len(self.tasks)} tasks"
        )
        return "\n".join(rows)


def probe(
    sae: SparseAutoencoder,
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str] = TASKS,
    per_class: int = 200,
    ks: Sequence[int] = KS,
    seed: int = 0,
    hook: str | None = None,
) -> ProbeReport:
    """Sparse probing of `sae` on `tasks` (module docstring)."""
    if sae.cfg.transcoder:
        raise ConfigError("sparse probing reads SAE latents at one hook; this is a transcoder")
    hook = sae.require_hook(hook)
    ctx = int(sae.cfg.metadata.get("context_size", 128))
    out = []
    for name in tasks:
        task = build_task(name, per_class, seed=seed)
        texts = [t for t, _ in task.train + task.test]
        y = torch.tensor([lab for _, lab in task.train + task.test])
        raw, lat = pooled(sae, model, tokenizer, texts, hook, ctx)
        n = len(task.train)
        y_tr, y_te = y[:n], y[n:]
        base = probe_accuracy(raw[:n], y_tr, raw[n:], y_te)
        accs, chosen = {}, {}
        for k in ks:
            idx = top_k_latents(lat[:n], y_tr, min(k, sae.d_sae))
            accs[k] = probe_accuracy(lat[:n, idx], y_tr, lat[n:, idx], y_te)
            chosen[k] = idx.tolist()
        out.append(TaskResult(name, task.classes, n, len(task.test), base, accs, chosen))
    return ProbeReport(out)


def save_probe(report: ProbeReport, sae_dir: str | Path) -> Path:
    """Write `probing.json` into the SAE directory (atomically; a pretrained spec: its
    Hugging Face cache folder)."""
    from ..formats.pretrained import sae_directory

    path = sae_directory(sae_dir) / PROBE_FILE
    data = {
        "mean_k20": report.mean(),
        "within_5_points": report.within(),
        "tasks": [asdict(t) for t in report.tasks],
    }
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path
