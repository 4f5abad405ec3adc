"""Training recipes at equal tokens: held-out FVU, L0 and dead % of TopK SAEs (k=32) that
sae_fast, EleutherAI sparsify and SAELens train, each with its own trainer and its own
defaults (learning rate and schedule, optimizer, dead-latent handling, decoder init), on
the same activations in the same batches.

    python -m benchmarks recipe                                   # the full grid (~1 h+ on 2 cores)
    python -m benchmarks recipe --tokens 204800 --batches 1024,4096 --expansions 8 --out /tmp/r

Data (once per `--work` directory, reused when it matches; without `--work`, in a temp
directory removed at the end): all-MiniLM-L6-v2 (the embedded model) at `layers.3.residual`
over the embedded corpus, windows of 128 tokens. The training rows are the first `--tokens`
real tokens; the held-out rows are `--heldout-tokens` real tokens of the windows after them
(later text, never trained on). A corpus too short for both keeps the held-out slice and
trains on what comes before it, with a warning. Both are float32 safetensors in the work
directory (`train.safetensors`, `heldout.safetensors`).

Same batches: sae_fast's `Trainer(cfg, data=...)` serves batch `s` through its
`MemoryFeed`, whose rows are `ActivationStore(train, seed).indices(s, batch)`: one seeded
permutation of the training rows, cut into consecutive batches. The driver computes that
order with `ActivationStore` itself (`order-*.safetensors`), the peers train on exactly
those index batches, and after sae_fast's run the driver checks that its feed served the
same indices (first and last step). Every library takes tokens // batch steps.

Each library trains with its own loop and defaults; only what defines the task is set
(d_in, d_sae, k, batch size, steps, CPU, no logging service, no mid-run checkpoints):
- sae_fast: `Trainer(TrainConfig(expansion, k, batch_size, steps, ...)).run()`; no recipe
  field is passed (learning rate, warmup, decay, AuxK, normalisation: its defaults).
  Its saved SAE has the input scale folded in, so it reads raw activations.
- sparsify, SAELens: `benchmarks/peers/recipe_child.py` in the peer environment, one process
  per (library, config); see its docstring for how each one's own trainer is driven.

Evaluation (here, the same code for all three): each SAE's weights in one layout
{W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec} through one TopK forward
(`sae_fast.ops.reference`: pre = (x - b_dec) @ W_enc + b_enc, top k, ReLU, decode) on the
raw held-out rows: FVU = sum |x - x_hat|^2 / sum |x - mean x|^2 over all rows, L0 = mean
active latents per row, dead % = latents that fire on no held-out row. The same forward on
as many training rows, spread evenly over them (`train_sample`), gives the dead % on
training rows (and their FVU, in the JSON): the held-out rows are later text of one kind (at
2M tokens, standard-library code only), so a latent that fires only on text of another kind
(the prose that leads the corpus) is dead there and alive in training. Each side also checks
that its library's own forward gives the same reconstruction (`check_err`).

Writes `<out>/recipe-cpu-<date>.json` (setup and rows) and `.md` after every row (atomic),
so a failure keeps the rows before it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from .common import RESULTS, machine

LIBS = ("sae_fast", "sparsify", "saelens")
PEERS = ("sparsify", "saelens")
MODEL, HOOK, CORPUS, CONTEXT, K, SEED = "embedded", "layers.3.residual", "embedded", 128, 32, 0
ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ("W_enc", "b_enc", "W_dec", "b_dec")
EVAL_CHUNK = 4096  # held-out rows per forward (dense pre-activations [chunk, d_sae])


# ----------------------------------------------------------------------------- CLI


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v.replace("_", "")) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"--{what}: expected positive integers, got {text!r}")
    return values


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks recipe", description=__doc__.split("\n")[0]
    )
    p.add_argument("--tokens", type=int, default=2_048_000, help="training tokens (rows)")
    p.add_argument("--heldout-tokens", type=int, default=40_960, help="held-out tokens")
    p.add_argument("--batches", default="1024,4096,8192", help="batch sizes (tokens per step)")
    p.add_argument("--expansions", default="8,32", help="d_sae / d_in")
    p.add_argument("--libs", default=",".join(LIBS), help=f"subset of {','.join(LIBS)}")
    p.add_argument("--work", type=Path, default=None, help="data cache dir (default: a temp dir)")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and .md go")
    a = p.parse_args(argv)
    a.batch_list = _ints(a.batches, "batches")
    a.expansion_list = _ints(a.expansions, "expansions")
    a.lib_list = [s.strip() for s in a.libs.split(",") if s.strip()]
    bad = [s for s in a.lib_list if s not in LIBS]
    if bad or not a.lib_list:
        raise SystemExit(f"--libs: unknown {bad or a.libs!r}; choose from {', '.join(LIBS)}")
    if a.tokens < 1 or a.heldout_tokens < 1:
        raise SystemExit("--tokens and --heldout-tokens must be >= 1")
    return a


# ----------------------------------------------------------------------------- files


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """safetensors, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    from sae_fast.files import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def _save_text(text: str, path: Path) -> None:
    from sae_fast.files import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ----------------------------------------------------------------------------- data


def _identity(tokens: int, heldout: int, corpus_hash: str) -> dict:
    return {
        "model": MODEL,
        "hook": HOOK,
        "corpus": CORPUS,
        "corpus_hash": corpus_hash,
        "context_size": CONTEXT,
        "tokens": tokens,
        "heldout_tokens": heldout,
        "version": 1,
    }


def _collect_into(model, tokenizer, windows: list[list[int]], n: int, what: str) -> dict:
    """Activations at HOOK of the real tokens of `windows`, the first `n` of them, with
    their token ids, window numbers and positions (sae_fast's `iter_activations`)."""
    from sae_fast.data.activations import is_causal_lm, iter_activations
    from sae_fast.data.filters import TokenFilter

    keep = TokenFilter.for_model(is_causal_lm(model), "auto", None)  # sae_fast's default
    acts = tokens = window = position = None
    filled, t0, shown = 0, time.perf_counter(), 0
    for b in iter_activations(model, tokenizer, windows, HOOK, max_tokens=n, keep=keep):
        if acts is None:
            acts = torch.empty(n, b.acts.shape[1], dtype=torch.float32)
            tokens, window, position = (torch.empty(n, dtype=torch.long) for _ in range(3))
        m = len(b.tokens)
        acts[filled : filled + m] = b.acts
        tokens[filled : filled + m] = b.tokens
        window[filled : filled + m] = b.window
        position[filled : filled + m] = b.position
        filled += m
        if filled * 10 // n > shown:
            shown = filled * 10 // n
            rate = filled / (time.perf_counter() - t0)
            print(f"    {what}: {filled:,} / {n:,} tokens ({rate:,.0f} tok/s)", flush=True)
    if acts is None or filled == 0:
        raise SystemExit(f"the embedded corpus gave no {what} tokens")
    return {
        "acts": acts[:filled].contiguous(),
        "tokens": tokens[:filled].contiguous(),
        "window": window[:filled].contiguous(),
        "position": position[:filled].contiguous(),
    }


def _read_windows(tokenizer, texts: list[str], need: int) -> tuple[list[list[int]], int, bool]:
    """(the corpus's first windows, holding at least `need` real tokens plus two windows'
    slack, or all of them; their real tokens; whether that is the whole corpus). Texts are
    tokenised only as far as needed when sae_fast has `iter_token_windows`."""
    from sae_fast.data import activations

    prefix, suffix = activations.special_frame(tokenizer)
    frame = len(prefix) + len(suffix)
    lazy = getattr(activations, "iter_token_windows", None)
    source = (
        lazy(tokenizer, texts, CONTEXT)
        if lazy is not None
        else iter(activations.token_windows(tokenizer, texts, CONTEXT))
    )
    windows, n = [], 0
    for w in source:
        if n >= need + 2 * CONTEXT:
            return windows, n, False
        windows.append(w)
        n += len(w) - frame
    return windows, n, True


def prepare(work: Path, tokens: int, heldout: int) -> dict:
    """Collect (or reuse) the training and held-out rows in `work`; returns the data's
    description (`meta.json`): paths, real row counts, d_in."""
    from sae_fast.data.activations import load_model, select_windows, special_frame
    from sae_fast.data.corpus import corpus_hash, load_texts

    work.mkdir(parents=True, exist_ok=True)
    texts = load_texts(CORPUS)
    identity = _identity(tokens, heldout, corpus_hash(texts))
    meta_path = work / "meta.json"
    train_path, held_path = work / "train.safetensors", work / "heldout.safetensors"
    if meta_path.exists() and train_path.exists() and held_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("identity") == identity:
            print(f"data: reusing {work} ({meta['n_train']:,} train, {meta['n_heldout']:,} "
                  "held-out rows)")  # fmt: skip
            return meta
        print(f"data: {work} holds other data ({meta.get('identity')}); collecting anew")
    t0 = time.perf_counter()
    model, tokenizer = load_model(MODEL)
    windows, total, complete = _read_windows(tokenizer, texts, tokens + heldout)
    prefix, suffix = special_frame(tokenizer)
    frame = len(prefix) + len(suffix)
    train_tokens = tokens
    if total < tokens + heldout:
        train_tokens = total - heldout
        if train_tokens < 1:
            raise SystemExit(
                f"the embedded corpus holds {total:,} tokens, not enough for "
                f"{heldout:,} held-out tokens and any training"
            )
        print(
            f"warning: the embedded corpus holds {total:,} tokens, fewer than the {tokens:,} "
            f"training + {heldout:,} held-out asked: training on the first {train_tokens:,}",
            file=sys.stderr,
            flush=True,
        )
    train_windows, _ = select_windows(tokenizer, windows, train_tokens)
    skip = sum(len(w) - frame for w in train_windows)  # whole windows: no overlap
    held_windows, skipped = select_windows(tokenizer, windows, heldout, skip_tokens=skip)
    assert skipped == skip, (skipped, skip)
    size = f"{total:,} tokens" if complete else f"{total:,}+ tokens read"
    print(f"data: {MODEL} at {HOOK}, embedded corpus ({size}, {len(windows):,} windows)")
    train = _collect_into(model, tokenizer, train_windows, train_tokens, "train")
    held = _collect_into(model, tokenizer, held_windows, heldout, "held-out")
    _save_tensors(train, train_path)
    _save_tensors(held, held_path)
    meta = {
        "identity": identity,
        "n_train": len(train["tokens"]),
        "n_heldout": len(held["tokens"]),
        "d_in": int(train["acts"].shape[1]),
        "corpus_tokens": total,  # what was read: all of it only if "corpus_complete"
        "corpus_complete": complete,
        "train_windows": len(train_windows),
        "heldout_windows": f"{len(train_windows)}..{len(train_windows) + len(held_windows) - 1}",
        "collect_seconds": round(time.perf_counter() - t0, 1),
    }
    if meta["n_heldout"] < heldout:
        print(f"warning: only {meta['n_heldout']:,} held-out tokens", file=sys.stderr)
    _save_text(json.dumps(meta, indent=2) + "\n", meta_path)
    print(f"data: collected in {meta['collect_seconds']} s into {work}")
    return meta


def served_order(train_acts: Tensor, batch: int, steps: int, seed: int = SEED) -> Tensor:
    """The row numbers sae_fast's MemoryFeed serves, step after step: [steps * batch]."""
    from sae_fast.data.store import ActivationStore

    store = ActivationStore(train_acts, seed=seed)
    return torch.cat([store.indices(s, batch) for s in range(steps)])


# ----------------------------------------------------------------------------- evaluation


def topk_forward(w: dict[str, Tensor], x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(reconstruction, values [B, k] >= 0, indices [B, k]) of the common TopK SAE."""
    from sae_fast.ops import reference as ref

    values, indices = ref.topk_act(ref.pre_activations(x, w["W_enc"], w["b_enc"], w["b_dec"]), k)
    return ref.decode_sparse(values, indices, w["W_dec"], w["b_dec"]), values, indices


def rel_err(got: Tensor, want: Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))


@torch.no_grad()
def evaluate(w: dict[str, Tensor], x: Tensor, k: int) -> dict[str, float]:
    """Held-out FVU (global), L0 and dead % of the SAE with weights `w` on raw rows `x`."""
    w = {n: w[n].float() for n in WEIGHTS}
    d_sae = w["W_enc"].shape[1]
    mean = x.double().mean(0)
    err = var = 0.0
    active = 0
    fired = torch.zeros(d_sae, dtype=torch.bool)
    for r0 in range(0, len(x), EVAL_CHUNK):
        xb = x[r0 : r0 + EVAL_CHUNK]
        recon, values, indices = topk_forward(w, xb, k)
        err += float((xb.double() - recon.double()).pow(2).sum())
        var += float((xb.double() - mean).pow(2).sum())
        on = values > 0
        active += int(on.sum())
        fired[indices[on]] = True
    return {
        "fvu": err / var,
        "l0": active / len(x),
        "dead_pct": 100.0 * float((~fired).sum()) / d_sae,
    }


def train_sample(train_acts: Tensor, n: int) -> Tensor:
    """`n` training rows (all of them when fewer), evenly spread: every (rows // n)-th."""
    step = max(1, len(train_acts) // max(1, n))
    return train_acts[::step][:n]


# ----------------------------------------------------------------------------- training


def train_sae_fast(
    spec: dict, train: dict[str, Tensor], held: Tensor
) -> tuple[dict[str, Tensor], dict]:
    """sae_fast's own Trainer with its defaults on the training rows `train` in memory;
    returns (weights, info). Checks that its feed served `spec["order"]`."""
    from sae_fast.config import TrainConfig
    from sae_fast.data.activations import ActivationBatch
    from sae_fast.training.recipe import auxk_window, revive_window
    from sae_fast.training.trainer import Trainer

    t = train
    batch = ActivationBatch(t["acts"], t["tokens"], t["window"], t["position"])
    order = load_tensors(Path(spec["order"]))["order"]
    B, steps = spec["batch"], spec["steps"]
    run_dir = Path(spec["run_dir"])
    cfg = TrainConfig(
        expansion=spec["expansion"], k=spec["k"], batch_size=B, steps=steps,
        max_tokens=len(batch.tokens), out=str(run_dir), progress=False, checkpoint_every=0,
        seed=SEED, device="cpu",
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer = Trainer(cfg, data=(batch, None, None))
    result = trainer.run()
    seconds = time.perf_counter() - t0
    for s in sorted({0, steps - 1}):  # the batches it trained on are the peers' batches
        index = trainer.feed.batch(s).index
        want = order[s * B : (s + 1) * B]
        if index is None or not torch.equal(index.cpu(), want):
            raise SystemExit(
                f"sae_fast's feed served other rows at step {s} than ActivationStore's order: "
                "the peers would not see the same batches (benchmarks/recipe.py docstring)"
            )
    sae = result.sae
    weights = {n: getattr(sae, n).detach().float().contiguous() for n in WEIGHTS}
    held = held[:2048]
    with torch.no_grad():
        own = sae(held).reconstruction
    lrs = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        lrs = [json.loads(line).get("lr", 0.0) for line in metrics.read_text().splitlines()]
    peak = getattr(trainer, "peak_lr", None) or (max(lrs) if lrs else None)
    recipe = {
        "optimizer": "Adam (0.9, 0.999)",
        "peak_lr": peak,
        "grad_clip": cfg.grad_clip,
        "auxk_coefficient": getattr(cfg, "auxk_coefficient", None),
        "dead_after_tokens": cfg.dead_after_tokens,
        "auxk_window": auxk_window(cfg, trainer.shard.d_sae, revives=True),
        "revive_window": revive_window(cfg, trainer.shard.d_sae),
        "revive_rows": cfg.revive_rows,
        "normalize_activations": cfg.normalize_activations,
        "decay_start": cfg.decay_start,
        **{n: getattr(cfg, n) for n in ("warmup_tokens", "warmup_steps") if hasattr(cfg, n)},
    }
    info = {
        "train_s": seconds,
        "check_err": rel_err(topk_forward(weights, held, spec["k"])[0], own),
        "recipe": recipe,
    }
    return weights, info


def _peer_env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "SPARSIFY_DISABLE_TRITON": "1",
        "WANDB_MODE": "disabled",
    }


def peer_versions() -> dict:
    """torch, sparsify and sae_lens versions in the peer environment (empty without one)."""
    from . import peers

    if not peers.ready():
        return {}
    code = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps({n: m.version(p) for n, p in (('torch', 'torch'), "
        "('sparsify', 'eai-sparsify'), ('sae_lens', 'sae-lens'))}))"
    )
    done = subprocess.run(
        [str(peers.python()), "-c", code], capture_output=True, text=True, env=_peer_env()
    )
    return json.loads(done.stdout) if done.returncode == 0 else {}


def train_peer(lib: str, spec: dict) -> tuple[dict[str, Tensor], dict]:
    """Train with `lib`'s own trainer in the peer environment (recipe_child.py)."""
    from . import peers

    log = Path(spec["run_dir"]) / "child.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "lib": lib}
    cmd = [str(peers.python()), "-m", "benchmarks.peers.recipe_child", json.dumps(spec)]
    with open(log, "w") as f:
        done = subprocess.run(
            cmd, cwd=ROOT, env=_peer_env(), stdout=f, stderr=subprocess.STDOUT, timeout=6 * 3600
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{lib} failed ({done.returncode}); {log}:\n{tail}")
    info = json.loads(Path(spec["result"]).read_text())
    return load_tensors(Path(spec["weights"])), info


# ----------------------------------------------------------------------------- report


def _config(row: dict) -> tuple[int, int]:
    return row["expansion"], row["batch"]


def verdict(rows: list[dict]) -> tuple[str, bool | None]:
    """The target: at every config sae_fast's held-out FVU <= the best peer's and its
    dead % <= 1. (text, met; None when no config has both sae_fast and a peer)."""
    configs = sorted({_config(r) for r in rows})
    checked, misses = 0, []
    for c in configs:
        here = [r for r in rows if _config(r) == c]
        ours = [r for r in here if r["library"] == "sae_fast"]
        peers_ = [r for r in here if r["library"] != "sae_fast"]
        if not ours or not peers_:
            continue
        checked += 1
        best = min(r["fvu"] for r in peers_)
        if ours[0]["fvu"] > best or ours[0]["dead_pct"] > 1.0:
            misses.append(
                f"{c[0]}x B={c[1]} (FVU {ours[0]['fvu']:.4f} vs best peer {best:.4f}, "
                f"dead {ours[0]['dead_pct']:.1f}%)"
            )
    target = "at every config sae_fast's held-out FVU <= the best peer's and its dead % <= 1"
    if not checked:
        return f"not checked: no config has both sae_fast and a peer ({target})", None
    if misses:
        return f"MISSED: {target}; missed at {'; '.join(misses)}", False
    return f"met: {target} ({checked} of {len(configs)} configs checked)", True


def markdown(setup: dict, rows: list[dict]) -> str:
    d = setup
    corpus = f"{d['corpus_tokens']:,} tokens"
    if not d.get("corpus_complete", True):
        corpus = f"more than {d['corpus_tokens']:,} tokens, read as far as needed"
    lines = [
        f"# Training recipes at equal tokens ({d['date']})",
        "",
        f"Machine: {d['machine']}. Command: `{d['command']}`.",
        "",
        f"Data: {d['model']} at `{d['hook']}`, embedded corpus ({corpus}), "
        f"windows of {d['context_size']}. Training rows: the first {d['n_train']:,} tokens; "
        f"held-out: {d['n_heldout']:,} tokens of the windows after them (later text). Every "
        "library trains on the same batches (sae_fast's `ActivationStore` order, seed "
        f"{SEED}) for tokens // batch steps, with its own trainer and defaults; k = {K}.",
        f"Versions: {', '.join(f'{n} {v}' for n, v in d['versions'].items())}.",
        "",
        "FVU = sum |x - x_hat|^2 / sum |x - mean x|^2 over the held-out rows (raw activations, "
        "one TopK forward for all three); L0 = mean active latents per row; dead = latents "
        "that fire on no held-out row; dead (training rows) = latents that fire on none of "
        "as many training rows, spread evenly over them. Best FVU per config in bold.",
        "",
        "| config | library | train s | tok/s | held-out FVU | L0 | dead % | dead % "
        "(training rows) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = {lib: i for i, lib in enumerate(LIBS)}
    for c in sorted({_config(r) for r in rows}):
        here = sorted((r for r in rows if _config(r) == c), key=lambda r: order[r["library"]])
        best = min(r["fvu"] for r in here)
        for r in here:
            fvu = f"{r['fvu']:.4f}"
            fvu = f"**{fvu}**" if r["fvu"] == best else fvu
            label = f"{r['expansion']}x (d_sae {r['d_sae']:,}), B={r['batch']}, {r['steps']} steps"
            lines.append(
                f"| {label} | {r['library']} | {r['train_s']:.1f} | {r['tokens_per_s']:,.0f} "
                f"| {fvu} | {r['l0']:.1f} | {r['dead_pct']:.1f} | {r['train_dead_pct']:.1f} |"
            )
    text, _ = verdict(rows)
    lines += ["", f"Target {text}.", "", "## Each library's recipe (its defaults, as run)", ""]
    seen = set()
    for r in sorted(rows, key=lambda r: (order[r["library"]], _config(r))):
        key = (r["library"], json.dumps(r.get("recipe", {}), sort_keys=True, default=str))
        if key in seen:
            continue
        seen.add(key)
        parts = ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in r.get("recipe", {}).items()
        )
        lines.append(f"- {r['library']} ({r['expansion']}x, B={r['batch']}): {parts}")
    if setup.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(setup["skipped"]) + "."]
    if setup.get("failures"):
        lines += ["", "Failed: " + "; ".join(setup["failures"]) + "."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, stem: str, setup: dict, rows: list[dict]) -> tuple[Path, Path]:
    jpath, mpath = out / f"{stem}.json", out / f"{stem}.md"
    _save_text(json.dumps({"setup": setup, "rows": rows}, indent=2, default=str) + "\n", jpath)
    _save_text(markdown(setup, rows), mpath)
    return jpath, mpath


# ----------------------------------------------------------------------------- run


def run(a: argparse.Namespace) -> list[dict]:
    from . import peers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    libs, skipped = [], []
    for lib in a.lib_list:
        if lib in PEERS and not peers.ready():
            note = f"{lib}: no peer environment (bash benchmarks/peers/setup.sh)"
            print(f"note: skipping {note}")
            skipped.append(note)
        else:
            libs.append(lib)
    if a.work is not None:
        return _run(a, a.work, libs, skipped)
    work = Path(tempfile.mkdtemp(prefix="sae_fast-recipe-"))
    print(f"data: in {work}, removed at the end (--work DIR keeps and reuses it)")
    try:
        return _run(a, work, libs, skipped)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(a: argparse.Namespace, work: Path, libs: list[str], skipped: list[str]) -> list[dict]:
    meta = prepare(work, a.tokens, a.heldout_tokens)
    n_train, d_in = meta["n_train"], meta["d_in"]
    train_path, held_path = work / "train.safetensors", work / "heldout.safetensors"
    held = load_tensors(held_path)["acts"]
    train = load_tensors(train_path)
    seen = train_sample(train["acts"], len(held))
    versions = {"torch": torch.__version__.split("+")[0]}
    if any(lib in PEERS for lib in libs):
        theirs = peer_versions()
        versions.update({n: v for n, v in theirs.items() if n != "torch"})
        if theirs.get("torch", versions["torch"]).split("+")[0] != versions["torch"]:
            versions["torch (peers)"] = theirs["torch"]
    argv = ["recipe", *(sys.argv[1:] if a.argv is None else a.argv)]
    setup = {
        "date": dt.date.today().isoformat(),
        "machine": machine("cpu"),
        "command": "python -m benchmarks " + " ".join(argv),
        "model": "all-MiniLM-L6-v2 (embedded)",
        "hook": HOOK,
        "context_size": CONTEXT,
        "k": K,
        "seed": SEED,
        "tokens_asked": a.tokens,
        "heldout_asked": a.heldout_tokens,
        "n_train": n_train,
        "n_heldout": meta["n_heldout"],
        "corpus_tokens": meta["corpus_tokens"],
        "corpus_complete": meta.get("corpus_complete", True),
        "work": str(work),
        "versions": versions,
        "libraries": libs,
        "skipped": skipped,
    }
    stem = f"recipe-cpu-{setup['date']}"
    rows: list[dict] = []
    print(f"recipe: {libs} on {n_train:,} training rows, {meta['n_heldout']:,} held-out rows")
    for E in a.expansion_list:
        for B in a.batch_list:
            steps = n_train // B
            if steps < 1:
                print(f"note: skipping B={B}: more than the {n_train:,} training rows")
                continue
            order_path = work / f"order-n{n_train}-b{B}-s{steps}.safetensors"
            _save_tensors({"order": served_order(train["acts"], B, steps)}, order_path)
            for lib in libs:
                name = f"{lib}-e{E}-b{B}"
                spec = {
                    "expansion": E, "d_in": d_in, "d_sae": E * d_in, "k": K, "batch": B,
                    "steps": steps, "seed": SEED, "train": str(train_path),
                    "order": str(order_path), "heldout": str(held_path),
                    "run_dir": str(work / "runs" / name),
                    "weights": str(work / "runs" / name / "weights.safetensors"),
                    "result": str(work / "runs" / name / "result.json"),
                }  # fmt: skip
                print(f"  {E}x B={B} ({steps} steps): {lib} ...", flush=True)
                t0 = time.perf_counter()
                try:
                    if lib == "sae_fast":  # saved like the peers' (re-evaluated later)
                        weights, info = train_sae_fast(spec, train, held)
                        _save_tensors(weights, Path(spec["weights"]))
                    else:
                        weights, info = train_peer(lib, spec)
                except (Exception, SystemExit) as err:  # the other rows go on
                    failure = f"{lib} at {E}x B={B}: {type(err).__name__}: {err}"
                    print(f"FAILED: {failure}", file=sys.stderr, flush=True)
                    setup.setdefault("failures", []).append(failure.splitlines()[0])
                    write_report(a.out, stem, setup, rows)
                    continue
                wall = time.perf_counter() - t0
                m, t = evaluate(weights, held, K), evaluate(weights, seen, K)
                row = {
                    "expansion": E, "d_in": d_in, "d_sae": E * d_in, "k": K, "batch": B,
                    "steps": steps, "tokens": steps * B, "library": lib,
                    "train_s": round(info["train_s"], 2),
                    "tokens_per_s": round(steps * B / max(info["train_s"], 1e-9), 1),
                    "wall_s": round(wall, 2),
                    "fvu": round(m["fvu"], 6), "l0": round(m["l0"], 3),
                    "dead_pct": round(m["dead_pct"], 3),
                    "train_dead_pct": round(t["dead_pct"], 3), "train_fvu": round(t["fvu"], 6),
                    "check_err": float(info.get("check_err", math.nan)),
                    "recipe": info.get("recipe", {}),
                }  # fmt: skip
                if not all(math.isfinite(row[n]) for n in ("fvu", "l0", "dead_pct")):
                    print(f"warning: {lib} at {E}x B={B} gave non-finite metrics: {m}")
                rows.append(row)
                write_report(a.out, stem, setup, rows)
                print(
                    f"    {lib:9s} train {row['train_s']:8.1f} s ({row['tokens_per_s']:9,.0f} "
                    f"tok/s)  FVU {row['fvu']:.4f}  L0 {row['l0']:5.1f}  dead "
                    f"{row['dead_pct']:5.1f}% ({row['train_dead_pct']:.1f}% on training rows)  "
                    f"(own forward vs common: {row['check_err']:.1e})",
                    flush=True,
                )
    jpath, mpath = write_report(a.out, stem, setup, rows)
    print(f"wrote {jpath}\nwrote {mpath}")
    print(verdict(rows)[0])
    if setup.get("failures"):
        raise SystemExit(f"{len(setup['failures'])} run(s) failed: {setup['failures']}")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    """`python -m benchmarks recipe [flags]` (module docstring)."""
    a = _parse(argv)
    a.argv = argv
    return run(a)


if __name__ == "__main__":
    main()
