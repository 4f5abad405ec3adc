"""Shared file helpers: atomic directory writes, guarded reads, typed cfg access, and the
one place where tensors read from any format become a `SparseAutoencoder`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..config import SAEConfig, dtype_from_name
from ..errors import ConfigError, FormatError


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside `path`; on success it replaces `path` in one rename.

    Files already in `path` that the writer did not produce are carried over (hard links
    where possible), so re-saving weights never loses, say, a sparsity file. On any error
    the temp dir is removed and `path` is left as it was.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    except OSError as err:
        raise PermissionError(f"cannot write under {parent}: {err.strerror or err}") from err
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            for entry in path.iterdir():
                target = tmp / entry.name
                if target.exists():
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, target)
                else:
                    try:
                        os.link(entry, target)
                    except OSError:
                        shutil.copy2(entry, target)
            old = parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` in one rename, on
    error it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as pretty JSON."""
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def require_dir(path: str | Path) -> Path:
    """`path` as a Path that must be an existing directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SAE directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory (expected an SAE directory)")
    return path


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file; FormatError (naming the file) if missing or invalid."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from {path.parent}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FormatError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise FormatError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file on CPU; FormatError if missing, truncated or corrupt."""
    if not path.is_file():
        raise FileNotFoundError(f"{path.name} is missing from {path.parent}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise FormatError(f"{path} is truncated or corrupt: {err}") from err


def write_safetensors(tensors: dict[str, Tensor], path: Path, meta: dict[str, str]) -> None:
    """Save CPU, contiguous copies of `tensors` (safetensors refuses shared storage)."""
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=meta
    )


def cfg_get(
    cfg: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...
) -> Any:
    """`cfg[key]` checked against `kind`; ConfigError naming the file and key otherwise."""
    if key not in cfg:
        if default is ...:
            raise ConfigError(f"{where} is missing the key {key!r}")
        return default
    value = cfg[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    bad_bool = isinstance(value, bool) and bool not in kinds
    if bad_bool or not isinstance(value, kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where}: {key!r} must be {names}, got {type(value).__name__} {value!r}")
    return value


def check_tensors(
    tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], where: str
) -> None:
    """Exactly the keys of `shapes`, each with that shape, all floating."""
    missing = sorted(set(shapes) - set(tensors))
    extra = sorted(set(tensors) - set(shapes))
    if missing:
        raise FormatError(f"{where} is missing tensors {missing} (has {sorted(tensors)})")
    if extra:
        raise FormatError(f"{where} has unexpected tensors {extra}; expected {sorted(shapes)}")
    for name, shape in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise FormatError(
                f"{where}: {name} has shape {tuple(t.shape)}, expected {shape} from the config"
            )
        if not t.is_floating_point():
            raise FormatError(f"{where}: {name} must be floating point, got {t.dtype}")


def build_sae(
    cfg: SAEConfig,
    params: dict[str, Tensor],
    *,
    device: torch.device | str,
    dtype: torch.dtype | str | None,
    backend: str,
    batchtopk_threshold: float | None = None,
    where: str = "weights",
):
    """A `SparseAutoencoder` from a config and its tensors in sae_fast orientation."""
    from ..sae import SparseAutoencoder

    torch_dtype = dtype_from_name(dtype if dtype is not None else cfg.dtype)
    sae = SparseAutoencoder(
        cfg.d_in, cfg.d_sae, activation=cfg.activation, k=cfg.k, backend=backend,
        dtype=torch_dtype, device=device, model_name=cfg.model_name,
        hook_name=cfg.hook_name, metadata=cfg.metadata, options=cfg.options,
    )  # fmt: skip
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    check_tensors(params, expected, where)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(params[name].to(device=p.device, dtype=p.dtype))
    sae.batchtopk_threshold = batchtopk_threshold
    return sae
