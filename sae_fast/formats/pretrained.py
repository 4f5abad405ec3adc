"""Pretrained SAEs: SAELens's registry of releases and plain Hugging Face repos.

A SAELens *release* (`gpt2-small-res-jb`) and *sae_id* (`blocks.8.hook_resid_pre`) name a
Hugging Face repo and a folder in it through SAELens's own `pretrained_saes.yaml`: the one
`registry=` names, else `$SAE_FAST_SAELENS_REGISTRY`, else the installed sae-lens package's
(found without importing sae_lens). A name that is not a release but looks like `org/name`
is a repo id, the sae_id its (optional) folder. One string holds both for the CLI:
`release/sae_id` or `org/name[/folder...]`.

Files come through `huggingface_hub.hf_hub_download` (the optional `sae_fast[hub]`
dependency), so its cache serves offline with `HF_HUB_OFFLINE=1`. The folder is read as
SAELens's format (`conversion_func` null), sparsify's, dictionary_learning's or Gemma Scope's
(gemma_2, gemma_3: sae_fast.formats.gemma_scope); a plain repo's
layout is told by the files it holds. Other conversions are refused by name.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, FormatError
from ..sae import SparseAutoencoder
from . import gemma_scope
from .dictionary_learning import load_dictionary_learning
from .saelens import from_saelens_parts, load_saelens, with_overrides
from .sparsify import load_sparsify

REGISTRY_ENV = "SAE_FAST_SAELENS_REGISTRY"
REGISTRY_FILE = "pretrained_saes.yaml"

# layout -> (files it needs, files it may have): what SAELens's loader of it downloads
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sae_lens": (("cfg.json", "sae_weights.safetensors"), ("sparsity.safetensors",)),
    "sparsify": (("cfg.json", "sae.safetensors"), ()),
    "dictionary_learning_1": (("config.json", "ae.pt"), ()),
    "gemma_2": (gemma_scope.GEMMA_2_FILES, ()),
    "gemma_3": (gemma_scope.GEMMA_3_FILES, ("config.json",)),
}
# a registry's `conversion_func` -> our layout (null is SAELens's own format)
CONVERSIONS = {None: "sae_lens", "sae_lens": "sae_lens", "sparsify": "sparsify",
               "dictionary_learning_1": "dictionary_learning_1", "gemma_2": "gemma_2",
               "gemma_3": "gemma_3"}  # fmt: skip
GEMMA = ("gemma_2", "gemma_3")  # the layouts gemma_scope reads
# Hugging Face's repo-id rule: `org/name`, letters, digits, `-_.`, no `--` or `..`
_REPO_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


@dataclass(frozen=True)
class Release:
    """One release of the registry: its repo, conversion and SAEs (sae_id -> folder)."""

    name: str
    repo_id: str
    model: str | None
    conversion_func: str | None
    paths: dict[str, str]
    neuronpedia: dict[str, str]
    norm_scaling_factor: dict[str, float]
    config_overrides: dict[str, Any]


@dataclass(frozen=True)
class Pretrained:
    """What a release/sae_id (or repo/folder) resolves to. `layout` None: told by the files;
    `overrides` and `norm_scaling_factor` are the registry's for that SAE."""

    repo_id: str
    folder: str
    layout: str | None
    release: str | None = None
    sae_id: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    norm_scaling_factor: float | None = None

    def describe(self) -> str:
        """`release/sae_id (repo org/name, folder f)` for messages."""
        where = f"repo {self.repo_id}" + (f", folder {self.folder}" if self.folder else "")
        return f"{self.release}/{self.sae_id} ({where})" if self.release else where


def registry_path(registry: str | Path | None = None) -> Path | None:
    """The registry yaml: `registry`, else $SAE_FAST_SAELENS_REGISTRY, else the installed
    sae-lens package's; None when there is none. A named file that is missing is an error."""
    named = registry if registry is not None else os.environ.get(REGISTRY_ENV) or None
    if named is not None:
        path = Path(named).expanduser()
        if not path.is_file():
            how = "registry=" if registry is not None else f"${REGISTRY_ENV}"
            raise ConfigError(f"the SAELens registry {path} ({how}) does not exist")
        return path
    try:
        spec = importlib.util.find_spec("sae_lens")  # finds the package, imports nothing
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / REGISTRY_FILE
        if path.is_file():
            return path
    return None


def _text(value: Any, what: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FormatError(f"{where}: {what} must be a string, got {value!r}")
    return str(value)


def _release(name: str, value: Any, where: str) -> Release:
    where = f"{where} [{name}]"
    if not isinstance(value, dict):
        raise FormatError(f"{where}: a release must be a mapping")
    saes = value.get("saes")
    if not isinstance(saes, list):
        raise FormatError(f"{where}: 'saes' must be a list")
    conversion = value.get("conversion_func")
    if conversion is not None and not isinstance(conversion, str):
        raise FormatError(f"{where}: conversion_func must be a string or null")
    overrides = value.get("config_overrides") or {}
    if not isinstance(overrides, dict):
        raise FormatError(f"{where}: config_overrides must be a mapping")
    paths: dict[str, str] = {}
    neuronpedia: dict[str, str] = {}
    factors: dict[str, float] = {}
    for entry in saes:
        if not isinstance(entry, dict) or "id" not in entry or "path" not in entry:
            raise FormatError(f"{where}: each SAE needs an 'id' and a 'path', got {entry!r}")
        sae_id = _text(entry["id"], "an SAE id", where)
        paths[sae_id] = _text(entry["path"], f"the path of {sae_id}", where).strip("/")
        if isinstance(entry.get("neuronpedia"), str):
            neuronpedia[sae_id] = entry["neuronpedia"]
        factor = entry.get("norm_scaling_factor")
        if factor is not None:
            if isinstance(factor, bool) or not isinstance(factor, (int, float)):
                raise FormatError(f"{where}: norm_scaling_factor of {sae_id} must be a number")
            factors[sae_id] = float(factor)
    model = value.get("model")
    return Release(
        name=name,
        repo_id=_text(value.get("repo_id"), "repo_id", where),
        model=model if isinstance(model, str) else None,
        conversion_func=conversion,
        paths=paths,
        neuronpedia=neuronpedia,
        norm_scaling_factor=factors,
        config_overrides=dict(overrides),
    )


@functools.lru_cache(maxsize=4)
def _parse(path: str, _mtime_ns: int) -> dict[str, Release]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # ~5x faster on 40k lines
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=loader)  # a safe loader
    except (OSError, yaml.YAMLError) as err:
        raise FormatError(f"cannot read the SAELens registry {path}: {err}") from err
    if not isinstance(data, dict):
        raise FormatError(f"the SAELens registry {path} must map release names to releases")
    return {str(name): _release(str(name), value, path) for name, value in data.items()}


def read_registry(registry: str | Path | None = None) -> dict[str, Release]:
    """The releases of the registry `registry_path(registry)` finds ({} when none); parsed
    once per file version."""
    path = registry_path(registry)
    if path is None:
        return {}
    return _parse(str(path), path.stat().st_mtime_ns)


def is_repo_id(text: str) -> bool:
    """Whether `text` is a Hugging Face repo id `org/name`."""
    parts = text.split("/")
    return len(parts) == 2 and all(
        _REPO_PART.fullmatch(p) and "--" not in p and ".." not in p and not p.endswith(".")
        for p in parts
    )


def _folder(sae_id: str | None, what: str) -> str:
    folder = (sae_id or "").strip("/")
    if folder and any(part in ("", ".", "..") for part in folder.split("/")):
        raise ConfigError(f"{what}: folder {sae_id!r} must be a relative path inside the repo")
    return folder


def split_spec(spec: str, *, registry: str | Path | None = None) -> tuple[str, str | None]:
    """`release/sae_id` -> (release, sae_id) when the first segment is a registry release
    (sae_ids may hold slashes); else `org/name/folder...` -> ("org/name", "folder...")."""
    head, _, rest = spec.strip("/").partition("/")
    if head in read_registry(registry):
        return head, rest or None
    org, _, tail = rest.partition("/")
    return f"{head}/{org}", tail or None


def _no_such_release(name: str, releases: dict[str, Release], path: Path | None) -> ConfigError:
    if path is None:
        return ConfigError(
            f"{name!r} is not a Hugging Face repo id (org/name) and no SAELens registry was "
            f"found to look it up as a release: install sae-lens, set ${REGISTRY_ENV} to its "
            "pretrained_saes.yaml, or pass registry="
        )
    close = difflib.get_close_matches(name, list(releases), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(
        f"release {name!r} is not in the SAELens registry {path} ({len(releases)} releases) "
        f"and is not a Hugging Face repo id (org/name){hint}"
    )


def resolve(
    release: str, sae_id: str | None = None, *, registry: str | Path | None = None
) -> Pretrained:
    """What `release` and `sae_id` name: a registry release and one of its SAE ids, or a
    Hugging Face repo id and an optional folder. With no `sae_id`, `release` may be one
    string `release/sae_id` or `org/name/folder` (see `split_spec`)."""
    if not isinstance(release, str) or not release.strip("/"):
        raise ConfigError(f"release must be a non-empty string, got {release!r}")
    if sae_id is not None and not isinstance(sae_id, str):
        raise ConfigError(f"sae_id must be a string or None, got {sae_id!r}")
    releases = read_registry(registry)
    if sae_id is None and release.strip("/").count("/") >= 1:
        release, sae_id = split_spec(release, registry=registry)
    entry = releases.get(release)
    if entry is None:
        if not is_repo_id(release):
            raise _no_such_release(release, releases, registry_path(registry))
        return Pretrained(release, _folder(sae_id, release), None)
    if sae_id not in entry.paths:
        ids = list(entry.paths)
        shown = ", ".join(ids[:5]) + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")
        close = difflib.get_close_matches(sae_id or "", ids, n=3) if sae_id else []
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        what = "needs an sae_id" if sae_id is None else f"has no SAE id {sae_id!r}"
        raise ConfigError(f"release {release!r} {what}; its ids are {shown}{hint}")
    if entry.conversion_func not in CONVERSIONS:
        raise FormatError(
            f"release {release!r} uses SAELens's conversion {entry.conversion_func!r}, which "
            "sae_fast does not implement: it reads SAELens-format (conversion_func null), "
            "sparsify and dictionary_learning_1 releases"
        )
    overrides = dict(entry.config_overrides)
    if sae_id in entry.neuronpedia:  # as SAELens's get_config_overrides adds it
        overrides["neuronpedia_id"] = entry.neuronpedia[sae_id]
    return Pretrained(
        repo_id=entry.repo_id,
        folder=_folder(entry.paths[sae_id], f"release {release!r}"),
        layout=CONVERSIONS[entry.conversion_func],
        release=release,
        sae_id=sae_id,
        overrides=overrides,
        norm_scaling_factor=entry.norm_scaling_factor.get(sae_id),
    )


def is_pretrained_spec(text: Any, *, registry: str | Path | None = None) -> bool:
    """Whether `text` (not an existing path) reads as `release[/sae_id]` or
    `org/name[/folder]` rather than a local path: a relative str whose first segment is no
    local file, and is a registry release or the org of a repo id."""
    if not isinstance(text, str) or not text or os.path.exists(text):
        return False
    if text.startswith(("/", ".", "~")) or "\\" in text or os.path.isabs(text):
        return False
    parts = text.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts) or os.path.exists(parts[0]):
        return False
    if parts[0] in read_registry(registry):
        return True
    return len(parts) >= 2 and is_repo_id(f"{parts[0]}/{parts[1]}")


def _hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.utils  # its errors (a lazy attribute of the package)
    except ImportError:
        raise ConfigError(
            "a pretrained SAE is downloaded with huggingface_hub, which is not installed: "
            "pip install huggingface_hub (or pip install 'sae_fast[hub]')"
        ) from None
    return huggingface_hub


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path | None:
    """The Hugging Face cache to use: `cache_dir`, else $HF_HUB_CACHE, else $HF_HOME/hub, read
    now (huggingface_hub reads them once, at import); None: huggingface_hub's default."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME")
    return Path(home).expanduser() / "hub" if home else None


class _Fetch:
    """Downloads (or finds in the cache) the files of one repo folder, telling a file the
    repo lacks from one that is not in the cache."""

    def __init__(self, target: Pretrained, cache_dir: Path | None) -> None:
        self.hub = _hub()
        self.target, self.cache_dir, self.offline = target, cache_dir, _offline()
        self.local_only = self.offline  # also once the Hub proved unreachable: no retries
        self.not_cached: list[str] = []  # files the cache lacks and could not be fetched
        self.last_error = ""

    def get(self, name: str) -> Path | None:
        """The local path of `name` in the folder; None when unavailable."""
        utils = self.hub.utils
        filename = f"{self.target.folder}/{name}" if self.target.folder else name
        try:
            path = self.hub.hf_hub_download(
                self.target.repo_id, filename, cache_dir=self.cache_dir,
                local_files_only=self.local_only, library_name="sae_fast",
            )  # fmt: skip
            return Path(path)
        except utils.LocalEntryNotFoundError as err:
            self.not_cached.append(name)
            if not self.local_only:  # the Hub could not be reached: the cache alone now
                self.local_only = True
                self.last_error = str(err).splitlines()[0] if str(err) else type(err).__name__
            return None
        except utils.EntryNotFoundError:
            return None  # the repo has no such file
        except utils.GatedRepoError:
            raise ConfigError(
                f"{self.target.describe()} is gated: accept its terms on huggingface.co and "
                "log in (`hf auth login` or $HF_TOKEN)"
            ) from None
        except (utils.RepositoryNotFoundError, utils.RevisionNotFoundError):
            raise ConfigError(
                f"{self.target.describe()}: no such Hugging Face repo (or it is private; log "
                "in with `hf auth login` or $HF_TOKEN)"
            ) from None
        except utils.HFValidationError as err:
            raise ConfigError(f"{self.target.describe()}: {err}") from None
        except (utils.HfHubHTTPError, OSError) as err:
            raise FormatError(f"{self.target.describe()}: download failed: {err}") from err

    def missing(self, names: list[str]) -> FormatError:
        """The error for a folder without `names`: not in the cache (when a look-up could
        not reach the Hub), else not in the repo."""
        what = self.target.describe()
        cache = self.cache_dir or "the default Hugging Face cache"
        if self.not_cached:
            why = (
                "HF_HUB_OFFLINE=1 forbids downloading it (unset HF_HUB_OFFLINE, or point "
                "HF_HUB_CACHE at a cache that holds it)"
                if self.offline
                else f"it could not be downloaded ({self.last_error})"
            )
            return FormatError(f"{what}: {', '.join(names)} not in the cache {cache}, and {why}")
        return FormatError(f"{what} holds no {' + '.join(names)}")


def _layout_files(fetch: _Fetch, layout: str) -> dict[str, Path]:
    got: dict[str, Path] = {}
    for name in LAYOUTS[layout][0]:
        path = fetch.get(name)
        if path is None:
            raise fetch.missing([name])
        got[name] = path
    return got


def _detect(fetch: _Fetch) -> tuple[str, dict[str, Path]]:
    cfg = fetch.get("cfg.json")
    if cfg is not None:
        for layout in ("sae_lens", "sparsify"):
            weights = fetch.get(LAYOUTS[layout][0][1])
            if weights is not None:
                return layout, {"cfg.json": cfg, LAYOUTS[layout][0][1]: weights}
        raise fetch.missing(["sae_weights.safetensors (SAELens) or sae.safetensors (sparsify)"])
    config = fetch.get("config.json")
    if config is not None:
        return "dictionary_learning_1", _layout_files(fetch, "dictionary_learning_1")
    raise fetch.missing(
        ["cfg.json (SAELens, sparsify) or config.json + ae.pt (dictionary_learning)"]
    )


_FETCHED: dict[tuple[Any, ...], tuple[Path, str]] = {}


def download(target: Pretrained, *, cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """(local folder, layout) of `target`: its files downloaded, or found in the Hugging Face
    cache. Remembered for the process, so a spec costs one look-up."""
    cache = hub_cache_dir(cache_dir)
    key = (target.repo_id, target.folder, target.layout, str(cache), _offline())
    if key in _FETCHED and _FETCHED[key][0].is_dir():
        return _FETCHED[key]
    fetch = _Fetch(target, cache)
    if target.layout is None:
        layout, files = _detect(fetch)
    else:
        layout, files = target.layout, _layout_files(fetch, target.layout)
    for name in LAYOUTS[layout][1]:  # sparsity.safetensors, when the repo has it
        path = fetch.get(name)
        if path is not None:
            files[name] = path
    folders = {p.parent for p in files.values()}
    if len(folders) != 1:  # two snapshots: the repo changed between two downloads
        raise FormatError(f"{target.describe()}: the repo changed while downloading; retry")
    _FETCHED[key] = (folders.pop(), layout)
    return _FETCHED[key]


def pretrained_dir(
    release: str,
    sae_id: str | None = None,
    *,
    registry: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """The local folder (in the Hugging Face cache) holding `release`/`sae_id`'s files."""
    return download(resolve(release, sae_id, registry=registry), cache_dir=cache_dir)[0]


def sae_directory(spec: str | Path) -> Path:
    """Where files beside an SAE (labels.json, sparsity, reports) live: `spec` itself unless
    it is a pretrained spec (`release/sae_id`, `org/name[/folder]`) and no local path, then
    its folder in the Hugging Face cache."""
    if is_pretrained_spec(spec):
        return pretrained_dir(str(spec))
    return Path(spec)


def _with_overrides(sae: SparseAutoencoder, overrides: dict[str, Any]) -> SparseAutoencoder:
    """A converted (sparsify, dictionary_learning) SAE with the registry's overrides: the
    model and hook names into the config, the rest into its metadata."""
    for key, value in overrides.items():
        if key in ("model_name", "hook_name"):
            if not isinstance(value, str):
                raise FormatError(f"config_overrides {key} must be a string, got {value!r}")
            setattr(sae.cfg, key, value)
        else:
            sae.cfg.metadata[key] = value
    return sae


def load_pretrained(
    release: str,
    sae_id: str | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    backend: str = "auto",
    registry: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> SparseAutoencoder:
    """Load a pretrained SAE (`SparseAutoencoder.from_pretrained`): a registry release and
    sae_id, or a Hugging Face repo id and folder; see `resolve`."""
    target = resolve(release, sae_id, registry=registry)
    if target.layout in GEMMA:  # what it holds is in its names: refused before downloading
        gemma_scope.check(target.layout, target.repo_id, target.folder)
    folder, layout = download(target, cache_dir=cache_dir)
    kw: dict[str, Any] = dict(device=device, dtype=dtype, backend=backend)
    if layout == "sae_lens":
        sae = load_saelens(
            folder, **kw, cfg_overrides=target.overrides or None,
            norm_scaling_factor=target.norm_scaling_factor,
        )  # fmt: skip
    elif layout in GEMMA:  # Gemma Scope: a SAELens cfg from the names
        raw, tensors = gemma_scope.read(layout, target.repo_id, target.folder, folder)
        raw = with_overrides(raw, target.overrides or None)
        sae = from_saelens_parts(raw, tensors, folder, **kw, where=(target.describe(),) * 2)
    else:
        load = load_sparsify if layout == "sparsify" else load_dictionary_learning
        sae = _with_overrides(load(folder, **kw), target.overrides)
    if "neuronpedia_id" in target.overrides:  # an old flat cfg.json has no metadata to hold it
        sae.cfg.metadata.setdefault("neuronpedia_id", target.overrides["neuronpedia_id"])
    return sae
