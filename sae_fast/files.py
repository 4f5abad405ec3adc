"""The file layer every package writes through: atomic files and directories (a temp
path, fsync, then rename, so a reader never sees half a file), and JSON and safetensors
reads that turn a bad file into one FormatError naming it."""

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

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import FormatError


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
