"""Binary probing tasks built from text that ships with Python, offline and with real labels.

Each task is two classes of short texts, split into train and test by *source* (module or
documentation topic), so a probe must generalise to files it never saw:

- `code_vs_docstring`: the body of a standard-library function (its docstring removed)
  against a docstring, from the same modules (a syntax task).
- `filesystem_vs_network`: docstrings of the file-system modules (os, shutil, pathlib, glob,
  tempfile, zipfile, tarfile, ...) against those of the network and mail modules (http,
  urllib, email, smtplib, ftplib, imaplib, xmlrpc, ...) (a topic task).
- `numbers_vs_text`: docstrings of numeric modules (decimal, fractions, statistics, random,
  numbers, colorsys) against text-processing ones (textwrap, difflib, string, re, html,
  gettext, codecs, shlex) (a topic task).
- `statements_vs_types`: passages of the language reference in `pydoc_data.topics` about
  statements (if, while, try, import, assignment, ...) against those about types and their
  methods (typesseq, typesmapping, string-methods, ...) (a documentation-genre task).

Sources are parsed with `ast` (never imported). Test sources are every third source of a
class in sorted order; texts are cut to `max_chars` and drawn with a seed.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

FILESYSTEM = (
    "os", "shutil", "pathlib", "glob", "tempfile", "fnmatch", "filecmp", "zipfile", "tarfile",
    "genericpath", "posixpath", "ntpath", "stat", "fileinput",
)  # fmt: skip
NETWORK = (
    "http", "urllib", "email", "smtplib", "ftplib", "imaplib", "poplib", "socketserver",
    "xmlrpc", "mailbox", "nntplib",
)  # fmt: skip
NUMBERS = ("decimal", "_pydecimal", "fractions", "statistics", "random", "numbers", "colorsys")
TEXT = ("textwrap", "difflib", "string", "re", "html", "gettext", "codecs", "shlex", "locale")
CODE_MODULES = FILESYSTEM + NETWORK + NUMBERS + TEXT
STATEMENTS = (
    "if", "while", "for", "try", "with", "assert", "import", "return", "del", "pass", "raise",
    "break", "continue", "global", "nonlocal", "assignment", "augassign", "exec", "yield",
    "compound", "function", "class", "async", "match", "exceptions", "execmodel", "naming",
    "lambda", "conditional",
)  # fmt: skip
TYPES = (
    "typesseq", "typesseq-mutable", "typesmapping", "typesnumeric", "typesfunctions",
    "typesmethods", "typesmodules", "string-methods", "specialattrs", "types", "numbers",
    "sequence-types", "bltin-type-objects", "bltin-null-object", "bltin-code-objects",
    "bltin-ellipsis-object", "dict", "formatstrings", "customization", "attribute-access",
    "numeric-types", "specialnames", "truth", "comparisons", "integers", "floating",
    "strings", "booleans",
)  # fmt: skip
TASKS = ("code_vs_docstring", "filesystem_vs_network", "numbers_vs_text", "statements_vs_types")


@dataclass
class ProbeTask:
    """Texts with 0/1 labels, split into train and test by source."""

    name: str
    classes: tuple[str, str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]


def _files(package: str) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    single = root / f"{package}.py"
    if single.exists():
        return [single]
    folder = root / package
    return sorted(p for p in folder.glob("*.py")) if folder.is_dir() else []


def _parsed(path: Path) -> tuple[str, ast.Module] | None:
    try:
        text = path.read_text(encoding="utf-8")
        return text, ast.parse(text)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


def _docstrings(path: Path) -> list[str]:
    got = _parsed(path)
    if got is None:
        return []
    _, tree = got
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 60:
                out.append(" ".join(doc.split()))
    return out


def _code_bodies(path: Path) -> list[str]:
    got = _parsed(path)
    if got is None:
        return []
    text, tree = got
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        lines = []
        for stmt in body:
            seg = ast.get_source_segment(text, stmt)
            if seg:
                lines.append(seg)
        code = "\n".join(lines)
        if len(code) >= 60:
            out.append(code)
    return out


def _by_source(modules: tuple[str, ...], extract) -> dict[str, list[str]]:
    return {str(p): extract(p) for m in modules for p in _files(m)}


def _topics(keys: tuple[str, ...], max_chars: int) -> dict[str, list[str]]:
    from pydoc_data.topics import topics

    out = {}
    for k in keys:
        if k in topics:
            words = topics[k].split()
            chunks, cur = [], []
            for w in words:
                cur.append(w)
                if sum(len(x) + 1 for x in cur) >= max_chars:
                    chunks.append(" ".join(cur))
                    cur = []
            out[k] = chunks
    return out


def _split(
    sources: dict[str, list[str]], label: int, per_class: int, max_chars: int, rng
) -> tuple[list, list]:
    names = sorted(s for s, texts in sources.items() if texts)
    if len(names) < 2:
        raise ConfigError("a probing class needs texts from at least two sources")
    test_names = set(names[1::3]) or {names[-1]}
    train = [(t[:max_chars], label) for s in names if s not in test_names for t in sources[s]]
    test = [(t[:max_chars], label) for s in names if s in test_names for t in sources[s]]
    rng.shuffle(train)
    rng.shuffle(test)
    n_test = max(1, per_class // 3)
    return train[: per_class - n_test], test[:n_test]


def build_task(name: str, per_class: int = 200, max_chars: int = 240, seed: int = 0) -> ProbeTask:
    """One task (module docstring) with up to `per_class` texts per class (a third of them
    in test), each cut to `max_chars` characters."""
    if per_class < 6:
        raise ConfigError(f"per_class must be >= 6, got {per_class}")
    if name == "code_vs_docstring":
        classes = ("code", "docstring")
        sides = (_by_source(CODE_MODULES, _code_bodies), _by_source(CODE_MODULES, _docstrings))
    elif name == "filesystem_vs_network":
        classes = ("filesystem", "network")
        sides = (_by_source(FILESYSTEM, _docstrings), _by_source(NETWORK, _docstrings))
    elif name == "numbers_vs_text":
        classes = ("numbers", "text")
        sides = (_by_source(NUMBERS, _docstrings), _by_source(TEXT, _docstrings))
    elif name == "statements_vs_types":
        classes = ("statements", "types")
        sides = (_topics(STATEMENTS, max_chars), _topics(TYPES, max_chars))
    else:
        raise ConfigError(f"unknown probing task {name!r}; known: {', '.join(TASKS)}")
    rng = random.Random(seed)
    parts = [_split(src, label, per_class, max_chars, rng) for label, src in enumerate(sides)]
    train = parts[0][0] + parts[1][0]
    test = parts[0][1] + parts[1][1]
    rng.shuffle(train)
    rng.shuffle(test)
    return ProbeTask(name, classes, train, test)
