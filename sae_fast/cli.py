"""`sae-fast`: the command line. Subcommands: `train`, `hooks`.

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


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with its type, default and help."""
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        annotation = str(f.type)
        if annotation == "bool":
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=f"{helptext} (default: {f.default})",
            )
            continue
        base = {"int": int, "float": float}.get(annotation.split(" |")[0], str)
        kind = _parse_optional(base) if "None" in annotation else base
        p.add_argument(
            flag,
            type=kind,
            default=f.default,
            metavar=base.__name__.upper(),
            help=f"{helptext} (default: {f.default})",
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
