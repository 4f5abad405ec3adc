"""Text corpora: the embedded one (ships with CPython), text files, JSONL, HF datasets dirs.

The embedded corpus ships with CPython, so `sae-fast train` works offline on any machine. It
has two named parts, prose first:
- `embedded:prose`: real English, the language-reference topics of `pydoc_data.topics` plus
  the docstrings of a fixed list of standard-library modules (imported without side effects);
- `embedded:code`: the standard library's own `.py` sources (about 1,800 files, 31.5 MB on
  CPython 3.11), one document per file, in sorted path order.
`embedded` is both, prose then code (the first 211k tokens are the prose, as before).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ConfigError, FormatError

EMBEDDED = "embedded"
EMBEDDED_PARTS = ("prose", "code")  # `embedded:<part>`; `embedded` is all of them, in order

# Imported only for their docstrings; none has import-time side effects.
_STDLIB_MODULES = (
    "abc argparse array ast asyncio base64 bisect calendar codecs collections configparser "
    "contextlib copy csv dataclasses datetime decimal difflib dis email enum fnmatch "
    "fractions functools gettext glob gzip hashlib heapq hmac html http.client inspect io "
    "ipaddress itertools json locale logging math mimetypes numbers operator os pathlib "
    "pickle pprint queue random re reprlib sched secrets selectors shlex shutil socket "
    "sqlite3 statistics string struct subprocess tarfile tempfile textwrap threading time "
    "timeit tokenize traceback types typing unicodedata unittest urllib.parse uuid warnings "
    "weakref xml.etree.ElementTree zipfile zlib"
).split()


def _docstrings(module_name: str) -> list[str]:
    try:
        mod = importlib.import_module(module_name)
    except ImportError:
        return []
    docs = [inspect.getdoc(mod) or ""]
    with warnings.catch_warnings():  # e.g. typing.io / typing.re warn when touched
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in sorted(dir(mod)):
            if name.startswith("_"):
                continue
            obj = getattr(mod, name, None)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(
                obj, "__module__", None
            ) == mod.__name__:
                docs.append(inspect.getdoc(obj) or "")
    return [d for d in docs if len(d) > 40]


def _prose() -> list[str]:
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)]
    for name in _STDLIB_MODULES:
        texts.extend(_docstrings(name))
    return texts


def stdlib_sources() -> list[Path]:
    """The standard library's `.py` files (installed packages left out), in sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = (p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _code() -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_sources()]


def embedded_texts(part: str | None = None) -> list[str]:
    """The embedded corpus (`part`: "prose" or "code"; None: both, prose first) as a list
    of documents, in a deterministic order."""
    parts = {"prose": _prose, "code": _code}
    if part is not None and part not in parts:
        raise ConfigError(
            f"unknown embedded corpus part {part!r}; expected one of "
            + ", ".join(f"{EMBEDDED}:{p}" for p in EMBEDDED_PARTS)
        )
    return [t for name in ([part] if part else EMBEDDED_PARTS) for t in parts[name]()]


def load_texts(source: str | Path, text_field: str = "text") -> list[str]:
    """Documents from `"embedded"` (or its part `"embedded:prose"` / `"embedded:code"`), a
    .txt/.md file, a directory of them, a .jsonl file (field `text_field`), or a directory
    saved by `datasets.Dataset.save_to_disk`."""
    name, colon, part = str(source).partition(":")
    if name == EMBEDDED and (colon or str(source) == EMBEDDED):
        texts = embedded_texts(part or None)
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"corpus {path} does not exist")
        if path.is_dir() and (path / "dataset_info.json").exists():
            texts = _hf_dataset(path, text_field)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".jsonl"))
            texts = [t for f in files for t in load_texts(f, text_field)]
        elif path.suffix == ".jsonl":
            texts = _jsonl(path, text_field)
        else:
            texts = [path.read_text(encoding="utf-8", errors="replace")]
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ConfigError(f"corpus {source} is empty: no non-blank text found")
    return texts


def iter_jsonl(path: str | Path, field: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each non-blank line of a JSONL file, read lazily; the record
    must be an object with a string `field` (FormatError naming the line otherwise)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise FormatError(f"{path}:{n} is not valid JSON: {err}") from err
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise FormatError(
                    f"{path}:{n} has no string field {field!r} (choose the field with --text-field)"
                )
            yield n, rec


def _jsonl(path: Path, field: str) -> list[str]:
    return [rec[field] for _n, rec in iter_jsonl(path, field)]


def _hf_dataset(path: Path, field: str) -> list[str]:
    try:
        import datasets
    except ImportError as err:
        raise ConfigError(
            f"{path} is a Hugging Face datasets directory; install the "
            "'datasets' package to read it"
        ) from err
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[next(iter(ds))]
    if field not in ds.column_names:
        raise FormatError(f"{path} has no column {field!r}; columns: {ds.column_names}")
    return list(ds[field])


def corpus_hash(texts: Iterable[str]) -> str:
    """Short content hash of a corpus (part of an activation cache's identity)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", errors="replace"))
        h.update(b"\x00")
    return h.hexdigest()[:16]
