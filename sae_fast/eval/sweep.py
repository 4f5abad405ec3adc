"""The dictionary-size sweep: train every width together from one pass over the data (the
data engine's many-SAE feed), evaluate each on the same held-out tokens, pick the elbow,
write `sweep.csv`, `sweep.md` and `sweep.png`.

Elbow: fidelity (the downstream score, or explained variance when downstream evaluation is
off) against log2(d_sae). Both axes are scaled to [0, 1] and the elbow is the width whose
point lies farthest above the chord from the smallest to the largest width: the discrete
maximum-curvature ("Kneedle", Satopää et al. 2011) point where doubling the dictionary
starts to buy much less. If no width lies above the chord (fidelity still grows at least
linearly in log width, or only two widths were trained), there is no elbow and the width
with the best fidelity is chosen; `SweepResult.reason` says which case applied.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError
from ..files import atomic_file
from ..training.multi import train_many
from .evaluate import DEFAULT_EVAL_TOKENS, EvalResult, EvalSet, evaluate
from .metrics import save_sparsity

CSV_FILE, MD_FILE, PNG_FILE = "sweep.csv", "sweep.md", "sweep.png"
SWEEP_MARK = "sweep.json"  # in each SAE directory a sweep trained


@dataclass
class SweepRow:
    """One trained width and its evaluation."""

    expansion: int
    d_sae: int
    sae_dir: str
    train_seconds: float
    eval_seconds: float
    result: EvalResult
    interp: dict[str, float] = field(default_factory=dict)  # probe_k20, detection, ...

    @property
    def fidelity(self) -> float:
        """The downstream score, or explained variance without downstream evaluation."""
        s = self.result.downstream_score
        return self.result.explained_variance if s is None else s

    def record(self) -> dict[str, Any]:
        """Flat dict for the CSV."""
        r = self.result
        return {
            "expansion": self.expansion,
            "d_sae": self.d_sae,
            "eval_tokens": r.n_tokens,
            "mse": r.mse,
            "fvu": r.fvu,
            "explained_variance": r.explained_variance,
            "cosine": r.cosine,
            "l2_ratio": r.l2_ratio,
            "l0": r.l0,
            "dead_pct": 100 * r.dead_fraction,
            "dense_pct": 100 * r.dense_fraction,
            "downstream_score": r.downstream_score,
            **{k: v for k, v in sorted(r.downstream.items()) if k != "downstream_score"},
            **self.interp,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "sae_dir": self.sae_dir,
        }


@dataclass
class SweepResult:
    """Rows (by width), the chosen row's index, why it was chosen, and the files written."""

    rows: list[SweepRow]
    chosen: int
    reason: str
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def chosen_expansion(self) -> int:
        return self.rows[self.chosen].expansion


def fidelity_name(result: EvalResult) -> str:
    """What the sweep's fidelity is for this kind of result (its elbow's y axis)."""
    if result.ce_loss_recovered is not None:
        return "CE loss recovered (vs zero abl.)"
    return "explained variance" if result.downstream_score is None else "downstream score"


def parse_expansions(text: str) -> list[int]:
    """`"4,8,16,32"` -> `[4, 8, 16, 32]`; ConfigError unless distinct positive integers."""
    try:
        values = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise ConfigError(
            f"expansions must be distinct positive integers separated by commas, got {text!r}"
        )
    return sorted(values)


def pick_elbow(widths: list[float], fidelity: list[float]) -> tuple[int, str]:
    """Index of the elbow of `fidelity` against log2(`widths`) (module docstring), and why."""
    if len(widths) != len(fidelity) or not widths:
        raise ValueError("need as many fidelity values as widths, at least one")
    order = sorted(range(len(widths)), key=lambda i: widths[i])
    xs = [math.log2(widths[i]) for i in order]
    ys = [fidelity[i] for i in order]
    if any(not math.isfinite(y) for y in ys):
        raise ValueError(f"fidelity values must be finite, got {fidelity}")
    best = max(range(len(ys)), key=lambda j: (ys[j], -j))
    if len(ys) < 3:
        return order[best], "fewer than 3 widths: no elbow; chose the best fidelity"
    x0, x1 = xs[0], xs[-1]
    lo, hi = min(ys), max(ys)
    if hi - lo <= 1e-12:
        return order[0], "fidelity is flat: chose the smallest width"
    xn = [(x - x0) / (x1 - x0) for x in xs]
    yn = [(y - lo) / (hi - lo) for y in ys]
    chord = [yn[0] + (yn[-1] - yn[0]) * x for x in xn]
    above = [yn[j] - chord[j] for j in range(len(ys))]
    j = max(range(1, len(ys) - 1), key=lambda j: above[j])
    if above[j] <= 1e-9:
        return order[best], "no width lies above the chord (no elbow yet): chose the best fidelity"
    return order[j], f"elbow: farthest above the chord (by {above[j]:.3f} of the scaled range)"


def _csv_text(rows: list[SweepRow], chosen: int) -> str:
    records = [r.record() | {"chosen": i == chosen} for i, r in enumerate(rows)]
    names: list[str] = []
    for rec in records:
        names += [k for k in rec if k not in names]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: ("" if v is None else v) for k, v in rec.items()})
    return buf.getvalue()


def _md_text(result: SweepResult, cfg: TrainConfig, eval_tokens: int) -> str:
    fid = fidelity_name(result.rows[0].result)
    causal = result.rows[0].result.ce_loss_recovered is not None
    extra = [(k, title) for k, title in INTERP_COLUMNS if k in result.rows[0].interp]
    if causal:
        extra.insert(0, ("kl", "KL (nats)"))
    heads = "".join(f" {title} |" for _, title in extra)
    lines = [
        f"# Dictionary-size sweep: {cfg.model} @ {cfg.hook}",
        "",
        f"{cfg.activation} SAEs (k={cfg.k}), {cfg.steps} steps of {cfg.batch_size} tokens, "
        f"all widths trained together from one pass over {cfg.max_tokens:,} tokens of corpus "
        f"`{cfg.corpus}` (train s: that shared time), evaluated on the next {eval_tokens:,} "
        "(held out).",
        "",
        f"| expansion | d_sae | FVU | explained var. | {fid} |{heads} dead % | dense % | L0 "
        "| train s | |",
        "|---:|---:|---:|---:|---:|" + "---:|" * len(extra) + "---:|---:|---:|---:|:--|",
    ]
    for i, row in enumerate(result.rows):
        r = row.result
        mark = "**chosen**" if i == result.chosen else ""
        vals = {"kl": r.kl_div, **row.interp}
        cells = "".join(f" {_cell(vals.get(k))} |" for k, _ in extra)
        lines.append(
            f"| {row.expansion}x | {row.d_sae} | {r.fvu:.4f} | {r.explained_variance:.4f} "
            f"| {row.fidelity:.4f} |{cells} {100 * r.dead_fraction:.2f} "
            f"| {100 * r.dense_fraction:.2f} | {r.l0:.1f} | {row.train_seconds:.0f} | {mark} |"
        )
    lines += [
        "",
        f"Chosen: **{result.chosen_expansion}x** (d_sae={result.rows[result.chosen].d_sae}); "
        f"{result.reason}. Method: fidelity against log2(d_sae), both scaled to [0, 1]; the "
        "elbow is the width farthest above the chord from the smallest to the largest width.",
        *(
            [
                "",
                "Interpretability beside reconstruction: sparse probing (mean k=20 accuracy over "
                "the four offline tasks, and the raw-activation probe's) and autointerp detection "
                "(mean balanced accuracy of the explanations on held-out contexts, and of shuffled "
                "labels: the gap is what the labels carry). A width whose reconstruction gains "
                "come with falling probing or detection scores splits features that mean less.",
            ]
            if extra and any(k != "kl" for k, _ in extra)
            else []
        ),
        "",
        f"![sweep]({PNG_FILE})",
        "",
    ]
    return "\n".join(lines)


INTERP_COLUMNS = (
    ("probe_k20", "probe k=20"),
    ("probe_raw", "raw probe"),
    ("detection", "detection"),
    ("shuffled_detection", "shuffled"),
)


def _cell(v: float | None) -> str:
    return "" if v is None or v != v else f"{v:.3f}"


def plot_sweep(rows: list[SweepRow], chosen: int, path: Path) -> Path:
    """PNG: FVU, fidelity, dead % and L0 against d_sae (log2 axis), chosen width marked."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    xs = [r.d_sae for r in rows]
    causal = rows[0].result.ce_loss_recovered is not None
    panels = [
        ("FVU (lower is better)", [r.result.fvu for r in rows]),
        (fidelity_name(rows[0].result), [r.fidelity for r in rows]),
        ("dead latents (%)", [100 * r.result.dead_fraction for r in rows]),
        ("L0 (active latents / token)", [r.result.l0 for r in rows]),
    ]
    if causal:  # the causal LM's second headline metric
        panels.insert(2, ("KL to the clean model (nats)", [r.result.kl_div for r in rows]))
    if "probe_k20" in rows[0].interp:
        panels.append(("sparse probing, k=20 accuracy", [r.interp["probe_k20"] for r in rows]))
    if "detection" in rows[0].interp:
        panels.append(("autointerp detection", [r.interp["detection"] for r in rows]))
    cols = (len(panels) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(4.5 * cols, 6.5), constrained_layout=True)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, ys) in zip(axes.flat, panels, strict=False):
        ax.plot(xs, ys, "o-", color="tab:blue")
        ax.plot([xs[chosen]], [ys[chosen]], "o", color="tab:red", markersize=10, zorder=3)
        ax.axvline(xs[chosen], color="tab:red", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{r.expansion}x\n{r.d_sae}" for r in rows])
        ax.minorticks_off()
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.suptitle(f"dictionary-size sweep (chosen: {rows[chosen].expansion}x, red)")
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_sweep(result: SweepResult, out: Path, cfg: TrainConfig, eval_tokens: int) -> None:
    """Write sweep.csv, sweep.md and sweep.png into `out` (each atomically)."""
    for name, text in (
        (CSV_FILE, _csv_text(result.rows, result.chosen)),
        (MD_FILE, _md_text(result, cfg, eval_tokens)),
    ):
        with atomic_file(out / name) as tmp:
            tmp.write_text(text)
        result.files[name] = out / name
    result.files[PNG_FILE] = plot_sweep(result.rows, result.chosen, out / PNG_FILE)
    chosen = result.rows[result.chosen]
    for i, row in enumerate(result.rows):  # each SAE says which sweep it belongs to
        mark = {
            "sweep": str((out / MD_FILE).resolve()),
            "expansion": row.expansion,
            "chosen": i == result.chosen,
            "chosen_expansion": chosen.expansion,
            "expansions": [r.expansion for r in result.rows],
            "reason": result.reason,
        }
        with atomic_file(Path(row.sae_dir) / SWEEP_MARK) as tmp:
            tmp.write_text(json.dumps(mark, indent=2) + "\n")


def interpretability(
    sae, sae_dir, eval_set: EvalSet, probe_per_class: int, n_features: int, max_tokens: int
) -> dict[str, float]:
    """A width's interpretability scores for the sweep (see `sweep`)."""
    out: dict[str, float] = {}
    if probe_per_class > 0:
        from .probing import probe

        rep = probe(sae, eval_set.model, eval_set.tokenizer, per_class=probe_per_class, ks=(1, 20))
        out["probe_k1"] = rep.mean(1)
        out["probe_k20"] = rep.mean(20)
        out["probe_raw"] = sum(t.baseline for t in rep.tasks) / len(rep.tasks)
    if n_features > 0:
        from ..analysis.autointerp import autointerp_dir

        got, _ = autointerp_dir(sae_dir, n_features=n_features, max_tokens=max_tokens)
        out["detection"] = got.mean("detection")
        out["shuffled_detection"] = got.mean("shuffled_detection")
    return out


def sweep_report(sae_dir: str | Path) -> Path | None:
    """The report (sweep.md) of the sweep that trained this SAE, if one did and it exists."""
    from ..formats.pretrained import sae_directory

    path = sae_directory(sae_dir) / SWEEP_MARK
    try:
        report = Path(json.loads(path.read_text())["sweep"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return report if report.exists() else None


def width_provenance(sae_dir: str | Path) -> str:
    """One line on how the SAE's width was chosen: by a sweep (with its report's path and
    whether this width was the elbow), or not (antipattern: sizing by intuition)."""
    from ..formats.pretrained import sae_directory

    path = sae_directory(sae_dir) / SWEEP_MARK
    if not path.exists():
        return (
            "width not chosen by a sweep: run `sae-fast sweep` to pick the dictionary size "
            "from data rather than by intuition"
        )
    try:
        m = json.loads(path.read_text())
        widths = ",".join(f"{e}x" for e in m["expansions"])
        if m["chosen"]:
            return f"width chosen by a sweep ({widths}; {m['reason']}): {m['sweep']}"
        return (
            f"width {m['expansion']}x from a sweep ({widths}) that chose "
            f"{m['chosen_expansion']}x, not this one: {m['sweep']}"
        )
    except (ValueError, KeyError, TypeError):
        return f"{path} is unreadable: the width's provenance is unknown"


def sweep(
    cfg: TrainConfig,
    expansions: list[int],
    eval_tokens: int = DEFAULT_EVAL_TOKENS,
    downstream: bool = True,
    log=print,
    probe_per_class: int = 0,
    autointerp_features: int = 0,
) -> SweepResult:
    """Train one SAE per expansion (`cfg` otherwise), all together from one pass over the
    data (streamed, or `cfg.cache`), evaluate each on the same held-out tokens, pick the
    elbow. With `probe_per_class` > 0, each width is also probed (`probing.probe`, k=1 and
    20); with `autointerp_features` > 0, that many features of each width are explained and
    scored by the local SmolLM2 (`analysis.autointerp`), their labels saved with the SAE."""
    if not expansions:
        raise ConfigError("expansions must list at least one width")
    out = Path(cfg.out)
    base = dataclasses.replace(cfg, d_sae=None)
    cfgs = [
        dataclasses.replace(base, expansion=e, out=str(out / f"x{e}")) for e in sorted(expansions)
    ]
    t0 = time.perf_counter()
    trained = train_many(cfgs)  # every width from one pass over the data
    train_s = time.perf_counter() - t0
    meta = trained[0].sae.cfg.metadata
    log(
        f"sweep: trained {len(cfgs)} widths together on {meta['train_tokens']:,} tokens "
        f"({cfg.steps} steps) in {train_s:.0f}s"
    )
    eval_set = EvalSet.build(
        base.model,
        base.hook,
        base.corpus,
        base.text_field,
        base.context_size,
        eval_tokens,
        skip_tokens=int(meta["train_tokens"]),
        target_hook=base.target_hook,
        token_filter=meta.get("token_filter"),
    )
    fidelity = eval_set.fidelity() if downstream else None
    rows = []
    for e, run in zip(sorted(expansions), trained, strict=True):
        t1 = time.perf_counter()
        res = evaluate(run.sae, eval_set, downstream=downstream, fidelity=fidelity)
        res.sae_name = str(run.sae_dir)
        save_sparsity(run.sae_dir, res.density)
        t2 = time.perf_counter()
        row = SweepRow(e, run.sae.d_sae, str(run.sae_dir), train_s, t2 - t1, res)
        row.interp = interpretability(
            run.sae, run.sae_dir, eval_set, probe_per_class, autointerp_features, eval_tokens
        )
        rows.append(row)
        log(
            f"sweep: {e}x (d_sae={row.d_sae}): FVU {res.fvu:.4f}, fidelity {row.fidelity:.4f}, "
            f"dead {100 * res.dead_fraction:.1f}%, L0 {res.l0:.1f}; eval {t2 - t1:.0f}s"
        )
    chosen, reason = pick_elbow([r.d_sae for r in rows], [r.fidelity for r in rows])
    result = SweepResult(rows, chosen, reason)
    write_sweep(result, out, base, eval_set.data.acts.shape[0])
    return result
