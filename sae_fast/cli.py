"""`sae-fast`: the command line. Subcommands: `train`, `eval`, `sweep`, `hooks`.

Expected errors (bad flags, missing files, unknown hooks) print one line `error: ...` and
exit with status 2; Ctrl-C during training saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import TrainConfig
from .errors import SAEFastError


def _parse_optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def _add_train_flags(p: argparse.ArgumentParser, **defaults) -> None:
    """One flag per TrainConfig field, with its type, default (or `defaults`) and help."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        annotation = str(f.type)
        default = defaults.get(f.name, f.default)
        if annotation == "bool":
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=f"{helptext} (default: {default})",
            )
            continue
        base = {"int": int, "float": float}.get(annotation.split(" |")[0], str)
        kind = _parse_optional(base) if "None" in annotation else base
        p.add_argument(
            flag,
            type=kind,
            default=default,
            metavar=base.__name__.upper(),
            help=f"{helptext} (default: {default})",
        )


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    result = train(TrainConfig(**values))
    m = result.metrics
    print(
        f"saved {result.sae_dir}: FVU {m.get('fvu', float('nan')):.3f}, "
        f"L0 {m.get('l0', float('nan')):.1f}, dead {m.get('dead_pct', float('nan')):.1f}%"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .eval import evaluate, save_sparsity
    from .sae import SparseAutoencoder

    sae = SparseAutoencoder.load(args.sae_dir, backend=args.backend)
    result = evaluate(
        sae,
        model=args.model,
        hook=args.hook,
        corpus=args.corpus,
        text_field=args.text_field,
        context_size=args.context_size,
        max_tokens=args.max_tokens,
        skip_tokens=args.skip_tokens,
        downstream=args.downstream,
        error_term=args.error_term,
        batch_size=args.batch_size,
    )
    result.sae_name = str(args.sae_dir)
    if args.save_sparsity:
        try:
            path = save_sparsity(args.sae_dir, result.density)
            print(f"wrote {path}", file=sys.stderr)
        except OSError as err:
            print(f"warning: could not write the sparsity file: {err}", file=sys.stderr)
    print(result.to_json() if args.json else result.table())
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .eval.sweep import parse_expansions, sweep

    expansions = parse_expansions(args.expansions)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    eval_tokens = args.eval_tokens
    if args.quick:  # a benchmark-sized budget: minutes, not tens of minutes
        values.update(max_tokens=20_000, steps=300, checkpoint_every=0)
        eval_tokens = min(eval_tokens, 5_000)
    result = sweep(TrainConfig(**values), expansions, eval_tokens, downstream=args.downstream)
    row = result.rows[result.chosen]
    print(f"chosen: {row.expansion}x (d_sae={row.d_sae}): {result.reason}")
    for path in result.files.values():
        print(f"wrote {path}")
    return 0


def _cmd_hooks(args: argparse.Namespace) -> int:
    from .data.activations import load_model
    from .data.hooks import list_hooks

    model, _ = load_model(args.model)
    for name in list_hooks(model):
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `sae-fast` argument parser."""
    p = argparse.ArgumentParser(prog="sae-fast", description="Sparse autoencoders, fast.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an SAE on a transformer's activations")
    _add_train_flags(t)
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("eval", help="evaluate a trained SAE (metrics table, --json)")
    e.add_argument("sae_dir", help="SAE directory (sae_fast, SAELens, sparsify, ...)")
    e.add_argument("--model", default=None, help="model (default: the SAE's model_name)")
    e.add_argument("--hook", default=None, help="hook (default: the SAE's hook_name)")
    e.add_argument("--corpus", default=None, help="corpus (default: the SAE's training corpus)")
    e.add_argument("--text-field", default="text", help="JSONL / datasets text field")
    e.add_argument("--context-size", type=int, default=None, help="(default: the SAE's)")
    e.add_argument("--max-tokens", type=int, default=20_000, help="tokens to evaluate on")
    e.add_argument(
        "--skip-tokens",
        type=int,
        default=None,
        help="tokens to skip first (default: the SAE's training tokens if same corpus)",
    )
    e.add_argument(
        "--downstream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="splice the SAE into the model and score the outputs (default: on)",
    )
    e.add_argument("--error-term", action="store_true", help="splice x_hat + (x - x_hat)")
    e.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    e.add_argument("--backend", default="auto", help="SAE backend")
    e.add_argument(
        "--save-sparsity",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write sparsity.safetensors (log10 density) into SAE_DIR (default: on)",
    )
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.set_defaults(func=_cmd_eval)
    s = sub.add_parser(
        "sweep", help="train several dictionary sizes on one cache, evaluate, pick the elbow"
    )
    _add_train_flags(s, out="runs/sweep")
    s.add_argument("--expansions", default="4,8,16,32", help="d_sae / d_in values (4,8,16,32)")
    s.add_argument("--eval-tokens", type=int, default=20_000, help="held-out tokens to evaluate")
    s.add_argument(
        "--downstream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score by downstream fidelity (else explained variance) (default: on)",
    )
    s.add_argument(
        "--quick",
        action="store_true",
        help="benchmark-sized budget: 20k training tokens, 300 steps, <= 5k eval tokens",
    )
    s.set_defaults(func=_cmd_sweep)
    h = sub.add_parser("hooks", help="list the hook points of a model")
    h.add_argument(
        "model",
        nargs="?",
        default="embedded",
        help="HF model name or local dir (default: embedded)",
    )
    h.set_defaults(func=_cmd_hooks)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `sae-fast`; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (
        SAEFastError,
        FileNotFoundError,
        NotADirectoryError,
        PermissionError,
        FileExistsError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
