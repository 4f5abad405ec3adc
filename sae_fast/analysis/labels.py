"""Feature labels: one `labels.json` per SAE directory.

    {"version": 1, "labels": {"123": {"label": "negation", "source": "human",
                                      "verified": true, "note": ""}}}

`source` is "human", "auto" or "none". Human labels set through `set` / `sae-fast label` are
verified; labels from an automatic labeller (any callable, `auto_label`, or `autointerp`)
are not until a person verifies them (`verify`, `sae-fast label SAE_DIR F --verify`), and
the browser shows them as unverified. An auto label also records its `explainer`, its
`scores` (autointerp: detection, fuzzing) and the `contexts` it was made and scored from.
Writes are atomic.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FormatError
from ..files import atomic_file, read_json
from ..validate import check_feature_id

LABELS_FILE = "labels.json"
SOURCES = ("human", "auto", "none")


@dataclass
class Label:
    """A feature's label and where it came from."""

    label: str = ""
    source: str = "none"
    verified: bool = False
    note: str = ""
    explainer: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    contexts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not all(isinstance(x, str) for x in (self.label, self.note, self.explainer)):
            raise ConfigError("label, note and explainer must be strings")
        if not isinstance(self.scores, dict) or not isinstance(self.contexts, dict):
            raise ConfigError("scores and contexts must be objects")
        if self.source not in SOURCES:
            raise ConfigError(f"label source must be one of {SOURCES}, got {self.source!r}")
        if not isinstance(self.verified, bool):
            raise ConfigError(f"verified must be true or false, got {self.verified!r}")


class Labels:
    """The labels of one SAE with `d_sae` features; `Labels.load(sae_dir, d_sae)`."""

    def __init__(self, d_sae: int, labels: dict[int, Label] | None = None, path=None) -> None:
        self.d_sae = d_sae
        self.labels: dict[int, Label] = dict(labels or {})
        self.path = Path(path) if path is not None else None

    def check_feature(self, feature: Any) -> int:
        """`feature` if it is a valid feature id of this SAE, else ConfigError."""
        return check_feature_id(feature, self.d_sae)

    @classmethod
    def load(cls, sae_dir: str | Path, d_sae: int) -> Labels:
        """Labels from `sae_dir/labels.json` (none if the file does not exist); a pretrained
        spec's labels live in its Hugging Face cache folder."""
        from ..formats.pretrained import sae_directory

        path = sae_directory(sae_dir) / LABELS_FILE
        if not path.exists():
            return cls(d_sae, path=path)
        data = read_json(path)
        raw = data.get("labels")
        if not isinstance(raw, dict):
            raise FormatError(f"{path} must hold an object 'labels'")
        out = cls(d_sae, path=path)
        for key, entry in raw.items():
            try:
                feature = out.check_feature(int(key))
                out.labels[feature] = Label(**entry)
            except (ValueError, TypeError) as err:
                raise FormatError(f"{path}: bad entry {key!r}: {err}") from err
        return out

    def get(self, feature: int) -> Label:
        """The label of `feature` (an empty "none" label if it has none)."""
        return self.labels.get(self.check_feature(feature), Label())

    def set(
        self,
        feature: int,
        label: str,
        source: str = "human",
        verified: bool | None = None,
        note: str = "",
        **extra: Any,
    ) -> Label:
        """Set a label; human labels are verified unless said otherwise, auto ones not
        (`extra`: explainer, scores, contexts)."""
        verified = source == "human" if verified is None else verified
        entry = Label(label, source, verified, note, **extra)
        self.labels[self.check_feature(feature)] = entry
        return entry

    def verify(self, feature: int, note: str = "") -> Label:
        """Record that a person checked `feature`'s label (ConfigError if it has none)."""
        lab = self.get(feature)
        if not lab.label:
            raise ConfigError(f"feature {feature} has no label to verify")
        lab.verified = True
        if note:
            lab.note = note
        self.labels[feature] = lab
        return lab

    def remove(self, feature: int) -> None:
        """Drop the label of `feature` (no-op if it has none)."""
        self.labels.pop(self.check_feature(feature), None)

    def save(self, path: str | Path | None = None) -> Path:
        """Write labels.json (temp file + rename)."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ConfigError("no path to save the labels to")
        data = {
            "version": 1,
            "labels": {str(f): asdict(self.labels[f]) for f in sorted(self.labels)},
        }
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        self.path = path
        return path


def auto_label(
    labels: Labels,
    features: Iterable[int],
    labeller: Callable[[int], str | None],
    overwrite_human: bool = False,
) -> int:
    """Label `features` with `labeller(feature) -> text` (None skips) as unverified "auto"
    labels; human labels are kept unless `overwrite_human`. Returns how many were set."""
    n = 0
    for f in features:
        if labels.get(f).source == "human" and not overwrite_human:
            continue
        text = labeller(f)
        if text:
            labels.set(f, str(text), source="auto", verified=False)
            n += 1
    return n
