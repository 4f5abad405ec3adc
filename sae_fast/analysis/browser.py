"""The feature browser: one self-contained `index.html` (data, CSS and JS inline; no server,
no external assets) with a searchable, sortable feature list and a panel per feature.

All text reaches the page as JSON inside a `<script type="application/json">` block (with
`<`, `>` and `&` escaped) and is put into the DOM with `textContent` only, so labels and
corpus text can never become markup.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..files import atomic_file
from .features import ACT_EDGES, Example, FeatureReport
from .labels import Labels

SITE_FILE = "index.html"


class TokenPieces:
    """Display text of token ids: word pieces joined the way the tokenizer would join them."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.wordpiece = tokenizer.convert_tokens_to_string(["a", "##b"]) == "ab"
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            tok = self.tokenizer.convert_ids_to_tokens(int(token_id))
            if self.wordpiece:
                text = tok[2:] if tok.startswith("##") else " " + tok
            else:
                text = self.tokenizer.convert_tokens_to_string([tok])
            self.cache[token_id] = text
        return self.cache[token_id]


def _context(ex: Example, windows: list[list[int]], width: int, used: set[int]) -> dict:
    ids, acts, centre = ex.span(windows, width)
    used.update(ids)
    return {
        "v": round(ex.value, 4),
        "w": ex.window,
        "p": ex.position,
        "t": ids,
        "a": [round(a, 4) for a in acts],
        "c": centre,
    }


def _effect_list(ids, vals, used: set[int]) -> list[list]:
    used.update(int(i) for i in ids)
    return [[int(i), round(float(v), 4)] for i, v in zip(ids, vals, strict=True)]


def site_data(
    report: FeatureReport,
    windows: list[list[int]],
    tokenizer: Any,
    labels: Labels,
    effects: tuple | None = None,
    intro: str = "",
    n_quantiles: int = 5,
) -> dict[str, Any]:
    """The JSON the page renders: features (stats, label, examples, effects) and the pieces
    of every token id used."""
    used: set[int] = set()
    density, mean = report.density, report.mean_act
    features = []
    for f in range(report.counts.shape[0]):
        lab = labels.get(f)
        entry: dict[str, Any] = {
            "id": f,
            "label": lab.label,
            "source": lab.source if lab.label else "none",
            "verified": lab.verified,
            "note": lab.note,
            "explainer": lab.explainer,
            "detection": lab.scores.get("detection"),
            "fuzzing": lab.scores.get("fuzzing"),
            "density": float(density[f]),
            "max": round(float(report.maxima[f]), 5),
            "mean": round(float(mean[f]), 5),
            "hist": report.hist[f].tolist(),
            "top": [_context(e, windows, report.width, used) for e in report.top_examples(f)],
            "quantiles": [
                _context(e, windows, report.width, used)
                for e in report.quantile_examples(f, n_quantiles)
            ],
        }
        if effects is not None:
            b_ids, b_vals, s_ids, s_vals = effects
            entry["boost"] = _effect_list(b_ids[f], b_vals[f], used)
            entry["suppress"] = _effect_list(s_ids[f], s_vals[f], used)
        features.append(entry)
    pieces = TokenPieces(tokenizer)
    return {
        "intro": intro,
        "hist_edges": list(ACT_EDGES),
        "vocab": {str(i): pieces(i) for i in sorted(used)},
        "features": features,
    }


def _script_json(data: dict[str, Any]) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_site(data: dict[str, Any], out_dir: str | Path, title: str) -> Path:
    """Write `out_dir/index.html` (temp file + rename)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PermissionError(f"cannot create the site directory {out}: {err}") from err
    template = resources.files("sae_fast.analysis").joinpath("browser.html").read_text("utf-8")
    page = template.replace("__TITLE__", html.escape(title)).replace("__DATA__", _script_json(data))
    path = out / SITE_FILE
    with atomic_file(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def build_feature_site(
    sae_dir: str | Path,
    out_dir: str | Path,
    *,
    model: str | None = None,
    hook: str | None = None,
    corpus: str | None = None,
    text_field: str = "text",
    max_tokens: int = 50_000,
    n_top: int = 10,
    n_samples: int = 16,
    width: int = 12,
    backend: str = "auto",
    allow_other_model: bool = False,
) -> Path:
    """Load the SAE and its model, run one pass over `max_tokens` tokens of the corpus
    (default: the SAE's training corpus), and write the browser into `out_dir`."""
    from ..eval.sweep import sweep_report, width_provenance
    from .features import token_effects
    from .scan import scan_corpus

    scan = scan_corpus(
        sae_dir, model=model, hook=hook, corpus=corpus, text_field=text_field,
        max_tokens=max_tokens, n_top=n_top, n_samples=n_samples, width=width,
        backend=backend, allow_other_model=allow_other_model,
    )  # fmt: skip
    sae, net, report, hook, target_hook = (
        scan.sae,
        scan.model,
        scan.report,
        scan.hook,
        scan.target_hook,
    )
    labels = Labels.load(sae_dir, sae.d_sae)
    kind, where = "SAE", hook
    if target_hook is not None:  # codes read at the input hook; decoder writes the target's
        kind, where = "transcoder", f"{hook} -> {target_hook}"
    intro = (
        f"{sae.activation} {kind} {sae.d_in} -> {sae.d_sae} at {where} of {scan.model_name}; "
        f"{report.n_tokens:,} tokens of corpus {scan.corpus}. {width_provenance(sae_dir)}."
    )
    effects = token_effects(sae, net)
    data = site_data(report, scan.windows, scan.tokenizer, labels, effects, intro)
    swept = sweep_report(sae_dir)
    if swept is not None:
        data["sweep_report"] = swept.resolve().as_uri()
    return write_site(data, out_dir, f"sae_fast features: {Path(sae_dir).name}")
