"""Uniform hook-point names over Hugging Face transformer module trees.

    embeddings            input of the first block (token + position embeddings)
    layers.{i}.residual   output of block i (the residual stream after it)
    layers.{i}.attn_out   output of block i's attention, before the residual add
    layers.{i}.mlp_in     input of block i's MLP (after its norm, where the model has one):
                          an MLP transcoder reads here and predicts mlp_out
    layers.{i}.mlp_out    output of block i's MLP, before the residual add

Resolved for BERT/MiniLM, GPT-2, GPT-NeoX/Pythia and Llama/Gemma-style models (with or
without their task heads). `capture(model, hook)` runs the model and stops the forward pass
right after the hooked module, so later layers cost nothing; `capture(model, hook,
target=...)` reads a second hook in the same pass (a transcoder's input and target), and
`capture_many(model, hooks)` any number of them (the data engine's one pass for many SAEs).
`patch(model, hook, fn)` replaces the activation there by `fn(activation)` (splicing an SAE
in, steering, ablating); `patch_from(model, source, hook, fn)` lets `fn` read an earlier
hook's activation too (splicing a transcoder).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError

# (block list path, attention-out path in a block, mlp-out path in a block, the module whose
# input is the MLP's input) per family. BERT's MLP is `intermediate` then `output.dense`.
_FAMILIES = [
    ("bert", "encoder.layer", "attention.output.dense", "output.dense", "intermediate"),
    ("gpt2", "h", "attn", "mlp", "mlp"),
    ("gpt_neox", "layers", "attention", "mlp", "mlp"),
    ("llama", "layers", "self_attn", "mlp", "mlp"),
]
_PREFIXES = ("", "bert.", "transformer.", "gpt_neox.", "model.", "model.language_model.")
_HOOK_RE = re.compile(r"^(embeddings|layers\.(\d+)\.(residual|attn_out|mlp_in|mlp_out))$")


@dataclass(frozen=True)
class Resolved:
    """Where a hook name lands: a module, and whether to read its input or its output."""

    name: str
    module: nn.Module
    read_input: bool


def _get(root: nn.Module, path: str) -> nn.Module | None:
    mod: nn.Module | None = root
    for part in path.split("."):
        if mod is None or not hasattr(mod, part):
            return None
        mod = getattr(mod, part)
    return mod if isinstance(mod, nn.Module) else None


def _blocks(model: nn.Module) -> tuple[nn.ModuleList, str, str, str]:
    """(blocks, attention path, mlp path, mlp-input path) for a supported model, else
    ConfigError."""
    for _family, blocks_path, attn, mlp, mlp_in in _FAMILIES:
        for prefix in _PREFIXES:
            blocks = _get(model, prefix + blocks_path)
            if (
                isinstance(blocks, nn.ModuleList)
                and len(blocks)
                and _get(blocks[0], attn)
                and _get(blocks[0], mlp)
                and _get(blocks[0], mlp_in)
            ):
                return blocks, attn, mlp, mlp_in
    raise ConfigError(
        f"cannot find the transformer blocks of {type(model).__name__}: supported are "
        "BERT/MiniLM, GPT-2, GPT-NeoX/Pythia and Llama/Gemma-style module trees"
    )


def list_hooks(model: nn.Module) -> list[str]:
    """Every hook name valid for `model`, in forward order."""
    blocks = _blocks(model)[0]
    names = ["embeddings"]
    for i in range(len(blocks)):
        names += [f"layers.{i}.{kind}" for kind in ("attn_out", "mlp_in", "mlp_out", "residual")]
    return names


def resolve_hook(model: nn.Module, hook: str) -> Resolved:
    """The module and read side for `hook`; ConfigError listing the valid names otherwise."""
    blocks, attn, mlp, mlp_in = _blocks(model)
    m = _HOOK_RE.match(hook) if isinstance(hook, str) else None
    if m is None or (m.group(2) is not None and int(m.group(2)) >= len(blocks)):
        valid = list_hooks(model)
        shown = ", ".join([*valid[:7], "...", *valid[-3:]] if len(valid) > 12 else valid)
        raise ConfigError(f"unknown hook {hook!r} for {type(model).__name__}; valid: {shown}")
    if hook == "embeddings":
        return Resolved(hook, blocks[0], read_input=True)
    block = blocks[int(m.group(2))]
    kind = m.group(3)
    if kind == "residual":
        return Resolved(hook, block, read_input=False)
    if kind == "mlp_in":
        return Resolved(hook, _get(block, mlp_in), read_input=True)
    return Resolved(hook, _get(block, attn if kind == "attn_out" else mlp), read_input=False)


class _StopForward(Exception):
    """Raised by the capture hook once the activation is in hand."""


def _first_tensor(value) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    raise TypeError(f"hooked module produced {type(value).__name__}, not a tensor")


class _Box(dict):
    """What `capture` yields: the activations by key, and the keys it waits for."""

    def __init__(self, wanted: tuple[str, ...]) -> None:
        super().__init__()
        self.wanted = wanted


@contextlib.contextmanager
def capture(
    model: nn.Module, hook: str, stop: bool = True, target: str | None = None
) -> Iterator[_Box]:
    """Within the block, each forward of `model` stores the hooked activation in the
    yielded dict under "act" (and the activation at `target`, if given, under "target") and,
    if `stop`, aborts the rest of the forward pass once it has them all; call the model
    through `run_to_hook`, which swallows that early stop."""
    keys = {"act": hook} if target is None else {"act": hook, "target": target}
    with _capture_keys(model, keys, stop) as box:
        yield box


@contextlib.contextmanager
def capture_many(model: nn.Module, hooks: list[str], stop: bool = True) -> Iterator[_Box]:
    """`capture` of several hooks in one forward pass, stored under their names; with
    `stop`, the pass ends after the deepest of them (`run_hooks` runs the model)."""
    if len(set(hooks)) != len(hooks):
        twice = sorted(h for h in set(hooks) if hooks.count(h) > 1)
        raise ConfigError(f"hooks listed twice: {twice}")
    with _capture_keys(model, {h: h for h in hooks}, stop) as box:
        yield box


@contextlib.contextmanager
def _capture_keys(model: nn.Module, keys: dict[str, str], stop: bool) -> Iterator[_Box]:
    wanted = {key: resolve_hook(model, hook) for key, hook in keys.items()}
    box = _Box(wanted=tuple(wanted))

    def store(key: str, value) -> None:
        box[key] = _first_tensor(value).detach()
        if stop and len(box) == len(wanted):
            raise _StopForward

    handles = []
    for key, where in wanted.items():
        if where.read_input:

            def on_input(_mod, args, kwargs, key=key):
                store(key, args[0] if args else kwargs.get("hidden_states"))

            handles.append(where.module.register_forward_pre_hook(on_input, with_kwargs=True))
        else:

            def on_output(_mod, _args, output, key=key):
                store(key, output)

            handles.append(where.module.register_forward_hook(on_output))
    try:
        yield box
    finally:
        for handle in handles:
            handle.remove()


def run_to_hook(model: nn.Module, box: _Box, **inputs) -> Tensor:
    """Run `model(**inputs)` inside `capture`; return the hooked activation (the target's,
    when `capture` was given one, is then in `box["target"]`)."""
    return run_hooks(model, box, **inputs)["act"]


def run_hooks(model: nn.Module, box: _Box, **inputs) -> _Box:
    """Run `model(**inputs)` inside `capture` / `capture_many`; return the box, which then
    holds every hooked activation."""
    box.clear()
    with contextlib.suppress(_StopForward):
        model(**inputs)
    if any(key not in box for key in box.wanted):
        raise RuntimeError("the hooked module did not run during the forward pass")
    return box


def _replace_first(value, new: Tensor):
    if isinstance(value, Tensor):
        return new
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    raise TypeError(f"hooked module produced {type(value).__name__}, not a tensor")


@contextlib.contextmanager
def patch(model: nn.Module, hook: str, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, every forward of `model` replaces the activation at `hook` by
    `fn(activation)` (same shape); the model is restored on exit, also after an error."""
    where = resolve_hook(model, hook)

    def on_input(_mod, args, kwargs):
        if args:
            return (_replace_first(args[0], fn(_first_tensor(args[0]))), *args[1:]), kwargs
        hidden = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": _replace_first(hidden, fn(_first_tensor(hidden)))}

    def on_output(_mod, _args, output):
        return _replace_first(output, fn(_first_tensor(output)))

    if where.read_input:
        handle = where.module.register_forward_pre_hook(on_input, with_kwargs=True)
    else:
        handle = where.module.register_forward_hook(on_output)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def patch_from(
    model: nn.Module, source: str, hook: str, fn: Callable[[Tensor, Tensor], Tensor]
) -> Iterator[None]:
    """`patch` whose replacement also reads the activation at `source`, a hook that runs
    earlier in the same forward pass: the activation at `hook` becomes
    `fn(activation, source activation)` (a transcoder reads mlp_in and replaces mlp_out)."""
    seen: dict[str, Tensor] = {}

    def remember(src: Tensor) -> Tensor:
        seen["src"] = src
        return src

    def replace(act: Tensor) -> Tensor:
        if "src" not in seen:
            raise RuntimeError(f"hook {source} did not run before {hook} in the forward pass")
        return fn(act, seen.pop("src"))

    with patch(model, source, remember), patch(model, hook, replace):
        yield


def check_width(width: int, d_in: int, hook: str) -> None:
    """ConfigError when activations of `width` at `hook` cannot feed an SAE of `d_in`."""
    if width != d_in:
        raise ConfigError(f"activations at {hook} have width {width}, the SAE expects d_in={d_in}")


def hook_widths(
    model: nn.Module, tokenizer, hook: str, target: str | None = None
) -> tuple[int, int | None]:
    """Widths of `model`'s activations at `hook` and at `target` (None without one), from one
    forward pass of one token."""
    ids = tokenizer("a", return_tensors="pt")
    device = next(model.parameters()).device
    with capture(model, hook, target=target) as box:
        act = run_to_hook(model, box, **{k: v.to(device) for k, v in ids.items()})
    return act.shape[-1], None if target is None else box["target"].shape[-1]


def check_hook_width(model: nn.Module, tokenizer, hook: str, d_in: int) -> None:
    """`check_width` for `model`'s activations at `hook` (one forward pass of one token)."""
    check_width(hook_widths(model, tokenizer, hook)[0], d_in, hook)
