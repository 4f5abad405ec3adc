"""Activation storage: an optional on-disk cache and the shuffled in-memory store.

Cache layout (a directory): `shard_00000.safetensors`, ... each holding `acts [n, d]`,
`tokens`, `window`, `position` (and, for a transcoder's (input, target) pairs, `target
[n, d_out]`), `windows.safetensors` (the token ids of its windows, so that a run it serves
needs neither the model nor the tokenizer), plus `manifest.json` (model, hook, target hook,
dtype, d_model, d_target, rows kept, corpus tokens collected and asked for, context size,
corpus hash, the model's fingerprint, shard list, complete flag). A cache serves every run
of the same identity that asks for at most its corpus tokens: the first windows, as a run
without the cache would read them (`prefix_rows`). Each shard is written to a
temp file and renamed, then the manifest is rewritten (temp + rename), so an interrupted
write leaves only complete shards and a manifest that says it is incomplete; such a cache,
or one whose manifest does not match the request, is refused with a clear message.

`ActivationStore` serves batch number `step` as a pure function of (seed, step): a fresh
permutation per epoch from a seeded generator. Training can therefore resume mid-epoch and
see exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..errors import ConfigError, DataError, FormatError
from ..files import atomic_file
from .activations import ActivationBatch

MANIFEST = "manifest.json"
CACHE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IDENTITY_KEYS = ("model", "hook", "target_hook", "context_size", "corpus_hash", "token_filter")
WINDOWS = "windows.safetensors"


def cache_identity(cfg: Any, texts: list[str], keep: Any) -> dict[str, Any]:
    """What a cache of a run with `cfg` (a TrainConfig) over `texts`, filtered by `keep` (a
    TokenFilter), must match (IDENTITY_KEYS)."""
    from .corpus import corpus_hash

    return {
        "model": cfg.model,
        "hook": cfg.hook,
        "target_hook": cfg.target_hook,
        "context_size": cfg.context_size,
        "corpus_hash": corpus_hash(texts),
        "token_filter": keep.identity(),
    }


def write_windows(path: Path, windows: list[list[int]]) -> None:
    """The token ids of `windows` as `path/windows.safetensors` (flat ids and lengths)."""
    ids = torch.tensor([t for w in windows for t in w], dtype=torch.int64)
    lengths = torch.tensor([len(w) for w in windows], dtype=torch.int64)
    with atomic_file(path / WINDOWS) as tmp:
        save_file({"ids": ids, "lengths": lengths}, str(tmp))


def read_windows(path: str | Path) -> list[list[int]]:
    """The windows `write_windows` stored in the cache at `path`."""
    f = Path(path) / WINDOWS
    try:
        t = load_file(str(f))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise FormatError(f"cache windows file {f} is missing or corrupt: {err}") from err
    ids = t["ids"].tolist()
    out, at = [], 0
    for n in t["lengths"].tolist():
        out.append(ids[at : at + n])
        at += n
    return out


def prefix_rows(path: str | Path, manifest: dict[str, Any], n_windows: int) -> int:
    """How many of the cache's rows (in order) come from its first `n_windows` windows."""
    path = Path(path)
    rows = 0
    for shard in manifest["shards"]:
        f = path / shard["file"]
        try:
            with safe_open(str(f), framework="pt") as h:
                window = h.get_slice("window")[:]
        except (SafetensorError, OSError, ValueError, RuntimeError, KeyError) as err:
            raise FormatError(f"cache shard {f} is missing or corrupt: {err}") from err
        below = int((window < n_windows).sum())
        rows += below
        if below < len(window):
            break
    return rows


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def concat_batches(batches: list[ActivationBatch]) -> ActivationBatch:
    """One ActivationBatch holding all rows of `batches`, in order."""
    with_target = {b.target is not None for b in batches}
    if len(with_target) > 1:
        raise ConfigError("cannot concatenate batches with and without targets")
    target = torch.cat([b.target for b in batches]) if with_target == {True} else None
    return ActivationBatch(
        *(
            torch.cat([getattr(b, f) for b in batches])
            for f in ("acts", "tokens", "window", "position")
        ),
        target=target,
    )


def write_cache(
    path: str | Path,
    batches: Iterable[ActivationBatch],
    identity: dict[str, Any],
    shard_tokens: int = 65536,
    dtype: str = "float32",
    counts: Callable[[], dict[str, int]] | None = None,
    windows: list[list[int]] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Stream `batches` into a cache at `path`, activations stored as `dtype` (float32,
    bfloat16 or float16); `identity` must hold IDENTITY_KEYS; `counts()`, if given, is stored
    as the manifest's "filter_counts" once the cache is complete; `windows` (the token ids
    the batches come from) go to windows.safetensors and `info` into the manifest. A write
    that fails (a full disk) leaves the shards written so far and a manifest marked
    incomplete, and raises a DataError saying what was kept."""
    path = Path(path)
    if dtype not in CACHE_DTYPES:
        raise ConfigError(f"cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
    stored = CACHE_DTYPES[dtype]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create the activation cache {path}: {err}") from err
    if (path / MANIFEST).exists():
        raise FileExistsError(f"{path} already holds an activation cache")
    manifest: dict[str, Any] = {
        **identity,
        **(info or {}),
        "version": 2,
        "complete": False,
        "n_tokens": 0,
        "d_model": None,
        "dtype": dtype,
        "shards": [],
    }
    pending: list[ActivationBatch] = []
    n_pending = 0

    def flush() -> None:
        nonlocal pending, n_pending
        if not pending:
            return
        shard = concat_batches(pending)
        name = f"shard_{len(manifest['shards']):05d}.safetensors"
        tensors = {
            "acts": shard.acts.to(stored).contiguous(),
            "tokens": shard.tokens,
            "window": shard.window,
            "position": shard.position,
        }
        if shard.target is not None:
            tensors["target"] = shard.target.to(stored).contiguous()
            manifest["d_target"] = int(shard.target.shape[1])
        try:
            with atomic_file(path / name) as tmp:
                save_file(tensors, str(tmp))
            entry = {"file": name, "n_tokens": len(shard.tokens)}
            _write_json_atomic(
                path / MANIFEST,
                {
                    **manifest,
                    "shards": [*manifest["shards"], entry],
                    "n_tokens": manifest["n_tokens"] + len(shard.tokens),
                    "d_model": int(shard.acts.shape[1]),
                },
            )
        except OSError as err:  # a full disk: the manifest on disk lists only whole shards
            raise DataError(
                f"writing the activation cache {path} failed at {name} ({err}); it kept "
                f"{len(manifest['shards'])} complete shards ({manifest['n_tokens']:,} tokens) "
                f"and its manifest says incomplete: free space and delete {path} to rebuild it"
            ) from err
        manifest["shards"].append(entry)
        manifest["n_tokens"] += len(shard.tokens)
        manifest["d_model"] = int(shard.acts.shape[1])
        pending, n_pending = [], 0

    _write_json_atomic(path / MANIFEST, manifest)
    if windows is not None:
        write_windows(path, windows)
    for batch in batches:
        pending.append(batch)
        n_pending += len(batch.tokens)
        if n_pending >= shard_tokens:
            flush()
    flush()
    if manifest["n_tokens"] == 0:
        raise ConfigError("no activations were collected (empty corpus?)")
    manifest["complete"] = True
    if counts is not None:  # what the token filter kept and dropped on the way
        manifest["filter_counts"] = counts()
    _write_json_atomic(path / MANIFEST, manifest)
    return path


def read_manifest(path: str | Path, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a complete cache; FormatError if incomplete/corrupt, ConfigError when
    it does not match `identity`."""
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(f"{path} is not an activation cache (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as err:
        raise FormatError(f"{mpath} is not valid JSON: {err}") from err
    if not manifest.get("complete"):
        kept = len(manifest.get("shards", []))
        raise FormatError(
            f"activation cache {path} is incomplete (its writer was interrupted; it kept "
            f"{kept} complete shards of {manifest.get('n_tokens', 0):,} tokens); "
            "delete the directory to rebuild it"
        )
    if identity is not None:
        diff = {
            k: (manifest.get(k), identity[k])
            for k in IDENTITY_KEYS
            if k in identity and manifest.get(k) != identity[k]
        }
        if diff:
            detail = "; ".join(
                f"{k}: cache has {a!r}, requested {b!r}" for k, (a, b) in diff.items()
            )
            raise ConfigError(
                f"activation cache {path} does not match this run ({detail}); "
                "use another --cache directory or delete it"
            )
    return manifest


def read_cache(
    path: str | Path, identity: dict[str, Any] | None = None, rows: int | None = None
) -> ActivationBatch:
    """Load a complete cache (its first `rows` rows, if given) into memory (float32);
    FormatError if incomplete/corrupt, ConfigError on mismatch (`cache_feed.CacheFeed`
    reads one larger than RAM)."""
    path = Path(path)
    manifest = read_manifest(path, identity)
    parts, seen = [], 0
    for shard in manifest["shards"]:
        if rows is not None and seen >= rows:
            break
        seen += shard["n_tokens"]
        f = path / shard["file"]
        try:
            t = load_file(str(f))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise FormatError(f"cache shard {f} is missing or corrupt: {err}") from err
        if len(t.get("tokens", ())) != shard["n_tokens"]:
            raise FormatError(
                f"cache shard {f} holds {len(t.get('tokens', ()))} tokens, "
                f"the manifest says {shard['n_tokens']}"
            )
        if (manifest.get("target_hook") is not None) != ("target" in t):
            raise FormatError(
                f"cache shard {f}: the manifest's target_hook is "
                f"{manifest.get('target_hook')!r} but the shard "
                f"{'has' if 'target' in t else 'lacks'} target activations"
            )
        target = t.get("target")
        parts.append(
            ActivationBatch(
                t["acts"].float(), t["tokens"], t["window"], t["position"],
                None if target is None else target.float(),
            )
        )  # fmt: skip
    whole = concat_batches(parts)
    return whole if rows is None or rows >= len(whole.tokens) else whole.rows(slice(0, rows))


class ActivationStore:
    """All activations in memory `[N, d]`; batch `step` is a pure function of (seed, step)."""

    def __init__(self, acts: Tensor, seed: int = 0) -> None:
        if acts.dim() != 2 or acts.shape[0] == 0:
            raise ConfigError(f"need a non-empty [N, d] activation matrix, got {tuple(acts.shape)}")
        self.acts = acts
        self.seed = seed
        self._perms: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return self.acts.shape[0]

    def _perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(len(self), generator=g)}  # keep one epoch
        return self._perms[epoch]

    def indices(self, step: int, batch_size: int) -> Tensor:
        """Row numbers of global step `step` (epochs wrap; no row repeats within an epoch)."""
        n = len(self)
        pos, need, parts = step * batch_size, batch_size, []
        while need > 0:
            epoch, offset = divmod(pos, n)
            take = min(need, n - offset)
            parts.append(self._perm(epoch)[offset : offset + take])
            pos, need = pos + take, need - take
        return torch.cat(parts)

    def batch(self, step: int, batch_size: int) -> Tensor:
        """Rows for global step `step` (see `indices`)."""
        return self.acts[self.indices(step, batch_size)]
