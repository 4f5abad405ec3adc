"""`sae-fast`: the command line. Subcommands: `collect`, `train`, `eval`, `sweep`, `features`,
`label`, `steer`, `monitor`, `trace`, `hooks`.

Every command that takes an SAE directory also takes a pretrained SAE: `release/sae_id`
of SAELens's registry, or a Hugging Face `org/name[/folder]` (an existing directory wins).

Expected errors (bad flags, missing files, unknown hooks) print one line `error: ...` and
exit with status 2; Ctrl-C during training saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

from .config import EvalConfig, FeaturesConfig, MonitorConfig, TrainConfig
from .errors import ConfigError, SAEFastError

# `sae-fast train` flags beyond TrainConfig's fields: which SAEs one pass trains
PLAN_FLAGS = ("hooks", "expansions")
# `sae-fast collect` flags: the TrainConfig fields that decide which activations a cache holds
COLLECT_FLAGS = (
    "model", "hook", "target_hook", "corpus", "text_field", "context_size", "max_tokens",
    "eval_tokens", "cache", "cache_dtype", "model_dtype", "drop_first", "max_norm_ratio",
    "device",
)  # fmt: skip
# the positional SAE argument of every analysis command
SAE_HELP = (
    "SAE directory (sae_fast, SAELens, sparsify, dictionary_learning), or a pretrained SAE: "
    "RELEASE/SAE_ID of SAELens's registry or a Hugging Face ORG/NAME[/FOLDER]"
)


def _parse_optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "null", "") else kind(text)

    parse.__name__ = kind.__name__
    return parse


def add_config_flags(
    p: argparse.ArgumentParser,
    config: type,
    lists: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    **defaults: Any,
) -> None:
    """One flag per field of the dataclass `config` (or of those named in `only`), with its
    type, default (or `defaults`; `dataclasses.MISSING` makes it required) and help; a field
    without a default is a required flag. The int fields named in `lists` take
    comma-separated values (one SAE per value)."""
    for f in dataclasses.fields(config):
        if only is not None and f.name not in only:
            continue
        if f.name in lists:
            p.add_argument(
                "--" + f.name.replace("_", "-"),
                default=str(f.default),
                metavar="INT[,INT...]",
                help=f.metadata.get("help", "")
                + f"; a list trains one SAE each (default: {f.default})",
            )
            continue
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        annotation = str(f.type)
        default = defaults.get(f.name, f.default)
        required = default is dataclasses.MISSING
        shown = "" if required or default is None else f" (default: {default})"
        if annotation == "bool":
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=helptext + shown
            )
            continue
        base = {"int": int, "float": float}.get(annotation.split(" |")[0], str)
        kind = _parse_optional(base) if "None" in annotation else base
        extra = {"required": True} if required else {"default": default}
        p.add_argument(
            flag, type=kind, metavar=base.__name__.upper(), help=helptext + shown, **extra
        )


def config_from(args: argparse.Namespace, config: type, **values: Any) -> Any:
    """The `config` dataclass built from the parsed flags `add_config_flags` made (and
    `values`, which take precedence; a field without a flag keeps its default)."""
    return config(
        **{
            f.name: values.get(f.name, getattr(args, f.name))
            for f in dataclasses.fields(config)
            if f.name in values or hasattr(args, f.name)
        }
    )


def timing_line(t: dict[str, float], metrics: dict[str, float]) -> str:
    """Where a run's time went, in one line (a stream's model time overlaps its steps)."""
    kept = metrics.get("tokens_kept")
    shown = f"{int(kept):,} tokens, " if kept is not None else ""
    return (
        f"time: activations {t['collect_seconds']:.1f}s ({shown}"
        f"{t['collect_tokens_per_s']:,.0f} tok/s); SAE steps {t['train_seconds']:.1f}s "
        f"({t['train_tokens_per_s']:,.0f} tok/s)"
    )


def _cmd_collect(args: argparse.Namespace) -> int:
    from .data.feeds import collect_cache
    from .data.store import read_manifest
    from .training.start import train_device

    cfg = config_from(args, TrainConfig)
    path = collect_cache(cfg, device=train_device(cfg.device))
    m = read_manifest(path)
    print(
        f"wrote {path}: {m['n_tokens']:,} activation rows of {m['hook']} from "
        f"{m['corpus_tokens']:,} corpus tokens ({cfg.max_tokens:,} for training + "
        f"{cfg.eval_tokens:,} held out asked); train on it with --cache {path} and any "
        "--max-tokens up to what it holds"
    )
    return 0


def summary_line(result: Any) -> str:
    """The end-of-run line of one SAE: its held-out metrics when it had held-out rows."""
    m = result.metrics
    if "heldout_fvu" in m:
        shown = (
            f"held-out ({int(m['heldout_tokens']):,} tokens) FVU {m['heldout_fvu']:.3f}, "
            f"L0 {m['heldout_l0']:.1f}, dead {m['heldout_dead_pct']:.1f}%"
        )
    else:
        shown = (
            f"no held-out slice; last training batch FVU {m.get('fvu', float('nan')):.3f}, "
            f"L0 {m.get('l0', float('nan')):.1f}"
        )
    dead = m.get("dead_pct", 0.0)
    return f"saved {result.sae_dir}: {shown}; dead latents in training {dead:.1f}%"


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.multi import parse_hooks, parse_list, plan, train_many

    ks = parse_list(args.k, "--k")
    assert ks is not None
    cfg = config_from(args, TrainConfig, k=ks[0])
    hooks = parse_hooks(args.hooks)
    expansions = parse_list(args.expansions, "--expansions")
    results = train_many(plan(cfg, hooks, expansions, ks if len(ks) > 1 else None))
    for result in results:
        print(summary_line(result))
    print(timing_line(results[0].timings, results[0].metrics))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .eval import evaluate, save_sparsity
    from .sae import SparseAutoencoder

    cfg = config_from(args, EvalConfig)
    sae = SparseAutoencoder.load(args.sae_dir, backend=cfg.backend)
    result = evaluate(sae, **cfg.evaluate_kwargs())
    result.sae_name = str(args.sae_dir)
    if cfg.save_sparsity:
        try:
            path = save_sparsity(args.sae_dir, result.density)
            print(f"wrote {path}", file=sys.stderr)
        except OSError as err:
            print(f"warning: could not write the sparsity file: {err}", file=sys.stderr)
    print(result.to_json() if cfg.json else result.table())
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .eval.sweep import parse_expansions, sweep

    expansions = parse_expansions(args.expansions)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    eval_tokens = args.eval_tokens
    if args.quick:  # a benchmark-sized budget: minutes, not tens of minutes
        values.update(max_tokens=20_000, steps=300, checkpoint_every=0)
        eval_tokens = min(eval_tokens, 5_000)
    result = sweep(
        TrainConfig(**values), expansions, eval_tokens, downstream=args.downstream,
        probe_per_class=args.probe_per_class, autointerp_features=args.autointerp,
    )  # fmt: skip
    row = result.rows[result.chosen]
    print(f"chosen: {row.expansion}x (d_sae={row.d_sae}): {result.reason}")
    for path in result.files.values():
        print(f"wrote {path}")
    return 0


def _load_sae_and_model(args: argparse.Namespace, sae=None):
    """(sae, model, tokenizer, labels) for the analysis subcommands (`sae` if loaded)."""
    from .analysis.labels import Labels
    from .data.activations import load_model
    from .data.fingerprint import check_model
    from .eval.splice import check_sae_widths
    from .sae import SparseAutoencoder

    sae = sae or SparseAutoencoder.load(args.sae_dir)
    model, tokenizer = load_model(sae.require_model(args.model))
    check_model(sae, model, args.allow_other_model)
    check_sae_widths(model, tokenizer, sae)  # a transcoder's target hook too
    return sae, model, tokenizer, Labels.load(args.sae_dir, sae.d_sae)


def _cmd_features(args: argparse.Namespace) -> int:
    from .analysis.browser import build_feature_site

    cfg = config_from(args, FeaturesConfig)
    path = build_feature_site(
        args.sae_dir,
        cfg.out,
        model=cfg.model,
        corpus=cfg.corpus,
        text_field=cfg.text_field,
        max_tokens=cfg.max_tokens,
        n_top=cfg.top,
        width=cfg.width,
        allow_other_model=cfg.allow_other_model,
    )
    from .eval.sweep import width_provenance

    print(width_provenance(args.sae_dir))
    print(f"wrote {path} (open it in a browser; no server needed)")
    return 0


def _cmd_label(args: argparse.Namespace) -> int:
    from .analysis.labels import Labels
    from .sae import SparseAutoencoder

    sae = SparseAutoencoder.load(args.sae_dir)
    labels = Labels.load(args.sae_dir, sae.d_sae)
    if args.clear:
        labels.remove(args.feature)
        print(f"feature {args.feature}: label removed")
    elif args.verify:
        if args.label is not None:
            labels.set(args.feature, args.label, source="human", note=args.note)
        lab = labels.verify(args.feature, args.note)
        print(f"feature {args.feature}: {lab.label!r} ({lab.source}, verified by a person)")
    else:
        if args.label is None:
            raise ConfigError("give the label text (or --clear)")
        labels.set(args.feature, args.label, source="human", note=args.note)
        print(f"feature {args.feature}: {args.label!r} (human, verified)")
    labels.save()
    return 0


def _parse_feature_values(items: list[str]) -> dict[int, float]:
    out = {}
    for item in items:
        fid, _, value = item.partition("=")
        try:
            out[int(fid)] = float(value) if value else 0.0
        except ValueError:
            raise ConfigError(f"--feature expects ID=VALUE (e.g. 123=8.0), got {item!r}") from None
    return out


def _cmd_steer(args: argparse.Namespace) -> int:
    from .analysis.steering import compare_embeddings, steer_report
    from .data.activations import is_causal_lm

    sae, model, tokenizer, labels = _load_sae_and_model(args)
    features = _parse_feature_values(args.feature)
    for f in features:
        lab = labels.get(f) if 0 <= f < sae.d_sae else None
        if lab is not None and lab.label:
            print(f"feature {f}: {lab.label}")
    if is_causal_lm(model):
        report = steer_report(
            model,
            tokenizer,
            sae,
            features,
            args.prompt,
            args.mode,
            args.max_new_tokens,
            args.seed,
            args.temperature,
            allow_other_model=args.allow_other_model,
        )
        print(report.text())
        return 0
    refs = None
    if args.references:
        refs = [t.strip() for t in open(args.references, encoding="utf-8") if t.strip()]
    cmp = compare_embeddings(model, tokenizer, sae, features, args.mode, args.prompt, refs)
    print(f"text: {args.prompt}")
    print(f"cosine(baseline, steered) embedding: {cmp['cosine_baseline_vs_steered']:.4f}")
    print(
        f"nearest reference, baseline: {cmp['nearest_baseline'][0]!r} "
        f"({cmp['nearest_baseline'][1]:.3f})"
    )
    print(
        f"nearest reference, steered:  {cmp['nearest_steered'][0]!r} "
        f"({cmp['nearest_steered'][1]:.3f})"
    )
    for ref, b, st in sorted(cmp["similarities"], key=lambda r: r[2] - r[1], reverse=True)[:5]:
        print(f"  {st - b:+.3f}  {b:.3f} -> {st:.3f}  {ref}")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from .analysis.labels import Labels
    from .analysis.monitor import Monitor, check_rule_labels, load_rules, read_jsonl_inputs
    from .sae import SparseAutoencoder

    cfg = config_from(args, MonitorConfig)
    sae = SparseAutoencoder.load(args.sae_dir)
    rules = load_rules(cfg.rules, sae.d_sae)  # rejected here, before any input is read
    check_rule_labels(rules, Labels.load(args.sae_dir, sae.d_sae), cfg.allow_unverified)
    if not os.path.isfile(cfg.input):
        raise FileNotFoundError(f"input file {cfg.input} does not exist")
    sae, model, tokenizer, labels = _load_sae_and_model(args, sae)
    mon = Monitor(
        sae, rules, model, tokenizer, labels=labels, allow_unverified=cfg.allow_unverified,
        allow_other_model=cfg.allow_other_model,
    )  # fmt: skip
    sink = open(cfg.output, "w", encoding="utf-8") if cfg.output else sys.stdout
    n_alerts = n_inputs = 0
    try:
        for input_id, text in read_jsonl_inputs(cfg.input, cfg.text_field):
            n_inputs += 1
            for alert in mon.check(text, input_id):
                n_alerts += 1
                sink.write(alert.to_json() + "\n")
                sink.flush()
    finally:
        if sink is not sys.stdout:
            sink.close()
    print(f"{n_inputs} inputs, {n_alerts} alerts", file=sys.stderr)
    return 1 if n_alerts else 0


def _cmd_trace(args: argparse.Namespace) -> int:
    from .analysis.trace import trace

    sae, model, tokenizer, labels = _load_sae_and_model(args)
    target: str | int | None = args.target
    if args.target is not None and args.target.isdigit():
        target = int(args.target)
    result = trace(
        model, tokenizer, sae, args.text, args.position, target, labels=labels,
        allow_other_model=args.allow_other_model,
    )  # fmt: skip
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        print(result.table(args.top))
    return 0


def _parse_ids(text: str | None) -> list[int] | None:
    """`--ids 12,40` -> [12, 40] (None when not given); ConfigError on anything else."""
    if not text:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--ids expects comma-separated ids, got {text!r}") from None


def _cmd_autointerp(args: argparse.Namespace) -> int:
    from .analysis.autointerp import autointerp_dir
    from .analysis.llm import HTTPChat

    chat = None
    if args.endpoint:
        chat = HTTPChat(args.endpoint, args.model or "")
    elif args.model:
        raise ConfigError("--model names the served model of --endpoint; give --endpoint too")
    features = _parse_ids(args.ids)
    result, path = autointerp_dir(
        args.sae_dir, chat, subject_model=args.subject_model, max_tokens=args.max_tokens,
        n_features=args.features, features=features, seed=args.seed,
        allow_other_model=args.allow_other_model,
    )  # fmt: skip
    print(json.dumps(result.summary(), indent=2) if args.json else result.table())
    print(f"wrote {path} and labels.json (auto, unverified)", file=sys.stderr)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from .data.probe_tasks import TASKS
    from .eval.probing import probe, save_probe

    sae, model, tokenizer, _labels = _load_sae_and_model(args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else TASKS
    report = probe(sae, model, tokenizer, tasks, per_class=args.per_class, seed=args.seed)
    path = save_probe(report, args.sae_dir)
    print(json.dumps(json.loads(path.read_text()), indent=2) if args.json else report.table())
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _cmd_absorption(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .eval.absorption import absorption
    from .files import atomic_file
    from .formats.pretrained import sae_directory

    sae, model, tokenizer, _labels = _load_sae_and_model(args)
    report = absorption(sae, model, tokenizer, n_words=args.words, seed=args.seed)
    data = {
        "absorption_rate": report.absorption_rate,
        "absorbed_fraction": report.absorbed_fraction,
        "main_latent_recall": report.mean_recall,
        "probe_accuracy": report.probe_accuracy,
        "letters": [asdict(r) for r in report.letters],
    }
    path = sae_directory(args.sae_dir) / "absorption.json"
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps(data, indent=2) if args.json else report.table())
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .analysis.exports import export_neuronpedia

    ids = _parse_ids(args.ids)
    paths = export_neuronpedia(
        args.sae_dir, args.out, features=ids, model=args.model, max_tokens=args.max_tokens,
        allow_other_model=args.allow_other_model,
    )  # fmt: skip
    print(f"wrote {len(paths)} Neuronpedia / SAEDashboard batch file(s) into {args.out}")
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
    c = sub.add_parser(
        "collect", help="write an activation cache (training + held-out tokens) and stop"
    )
    add_config_flags(c, TrainConfig, only=COLLECT_FLAGS, cache=dataclasses.MISSING)
    c.set_defaults(func=_cmd_collect)
    t = sub.add_parser("train", help="train SAEs on a transformer's activations")
    add_config_flags(t, TrainConfig, lists=("k",))
    t.add_argument(
        "--hooks",
        default=None,
        help="several hooks from one forward pass, comma-separated; IN:OUT for a transcoder "
        "(each SAE in <out>/<hook>[/<variant>]; default: --hook alone, in <out>/sae)",
    )
    t.add_argument("--expansions", default=None, help="several widths on each hook, e.g. 8,16,32")
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("eval", help="evaluate a trained SAE (metrics table, --json)")
    e.add_argument("sae_dir", help=SAE_HELP)
    add_config_flags(e, EvalConfig)
    e.set_defaults(func=_cmd_eval)
    s = sub.add_parser(
        "sweep", help="train several dictionary sizes on one cache, evaluate, pick the elbow"
    )
    add_config_flags(s, TrainConfig, out="runs/sweep")
    s.add_argument("--expansions", default="4,8,16,32", help="d_sae / d_in values (4,8,16,32)")
    s.add_argument(
        "--downstream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score by downstream fidelity (else explained variance) (default: on)",
    )
    s.add_argument(
        "--quick",
        action="store_true",
        help="benchmark-sized budget: 20k training tokens, 300 steps, <= 5k eval tokens",
    )
    s.add_argument(
        "--probe-per-class", type=int, default=60,
        help="sparse probing of each width, texts per class (0: off) (default: 60)",
    )  # fmt: skip
    s.add_argument(
        "--autointerp", type=int, default=0,
        help="features of each width to explain and score with the local SmolLM2 (default: 0)",
    )  # fmt: skip
    s.set_defaults(func=_cmd_sweep)

    def analysis_parser(name: str, help: str) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help)
        a.add_argument("sae_dir", help=SAE_HELP)
        a.add_argument("--model", default=None, help="model (default: the SAE's model_name)")
        a.add_argument(
            "--allow-other-model",
            action="store_true",
            help="use the SAE on a model other than the one it was trained on",
        )
        return a

    f = sub.add_parser("features", help="write the feature browser (a static site)")
    f.add_argument("sae_dir", help=SAE_HELP)
    add_config_flags(f, FeaturesConfig)
    f.set_defaults(func=_cmd_features)
    lab = sub.add_parser("label", help="set (or --clear) a human label of a feature")
    lab.add_argument("sae_dir", help=SAE_HELP)
    lab.add_argument("feature", type=int, help="feature id")
    lab.add_argument("label", nargs="?", default=None, help="label text")
    lab.add_argument("--note", default="", help="free-text note")
    lab.add_argument("--clear", action="store_true", help="remove the label")
    lab.add_argument(
        "--verify", action="store_true", help="record that a person checked the (auto) label"
    )
    lab.set_defaults(func=_cmd_label)
    st = analysis_parser("steer", "baseline vs steered output of a prompt")
    st.add_argument("--prompt", required=True, help="text to run")
    st.add_argument(
        "--feature", action="append", required=True, help="ID=VALUE (repeatable), e.g. 123=8"
    )
    st.add_argument("--mode", default="add", choices=("add", "clamp", "ablate"))
    st.add_argument("--max-new-tokens", type=int, default=20, help="causal LMs: tokens to add")
    st.add_argument("--references", default=None, help="encoders: file of reference sentences")
    st.add_argument("--seed", type=int, default=None, help="causal LMs: sample (default: greedy)")
    st.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    st.set_defaults(func=_cmd_steer)
    mo = sub.add_parser("monitor", help="check JSONL inputs against feature rules")
    mo.add_argument("sae_dir", help=SAE_HELP)
    add_config_flags(mo, MonitorConfig)
    mo.set_defaults(func=_cmd_monitor)
    tr = analysis_parser("trace", "features active at a token and their contributions")
    tr.add_argument("--text", required=True, help="input text")
    tr.add_argument("--position", type=int, required=True, help="token index (-1: last)")
    tr.add_argument("--target", default=None, help="causal LMs: next token (default: top)")
    tr.add_argument("--top", type=int, default=15, help="features to list")
    tr.add_argument("--json", action="store_true", help="print JSON")
    tr.set_defaults(func=_cmd_trace)
    ai = sub.add_parser("autointerp", help="explain features with an LLM and score the labels")
    ai.add_argument("sae_dir", help=SAE_HELP)
    ai.add_argument("--features", type=int, default=50, help="random live features (50)")
    ai.add_argument("--ids", default=None, help="these feature ids instead, e.g. 12,40")
    ai.add_argument("--endpoint", default=None, help="OpenAI-compatible URL, e.g. .../v1")
    ai.add_argument("--model", default=None, help="with --endpoint: the served model name")
    ai.add_argument("--subject-model", default=None, help="default: the SAE's model")
    ai.add_argument("--max-tokens", type=int, default=30_000, help="tokens to scan (30000)")
    ai.add_argument("--seed", type=int, default=0, help="feature choice and splits (0)")
    ai.add_argument("--allow-other-model", action="store_true", help="skip the model check")
    ai.add_argument("--json", action="store_true", help="print the summary as JSON")
    ai.set_defaults(func=_cmd_autointerp)
    pr = analysis_parser("probe", "k-sparse probes on SAE latents vs a raw-activation probe")
    pr.add_argument("--tasks", default=None, help="comma-separated (default: all four)")
    pr.add_argument("--per-class", type=int, default=200, help="texts per class (200)")
    pr.add_argument("--seed", type=int, default=0, help="which texts (0)")
    pr.add_argument("--json", action="store_true", help="print probing.json")
    pr.set_defaults(func=_cmd_probe)
    ab = analysis_parser("absorption", "first-letter feature absorption (Chanin et al. 2024)")
    ab.add_argument("--words", type=int, default=1200, help="one-token words to use (1200)")
    ab.add_argument("--seed", type=int, default=0, help="which words (0)")
    ab.add_argument("--json", action="store_true", help="print absorption.json")
    ab.set_defaults(func=_cmd_absorption)
    ex = analysis_parser("export", "write Neuronpedia / SAEDashboard feature JSON")
    ex.add_argument("--out", required=True, help="output directory (batch-N.json)")
    ex.add_argument("--ids", default=None, help="feature ids (default: every one that fired)")
    ex.add_argument("--max-tokens", type=int, default=50_000, help="tokens to scan (50000)")
    ex.set_defaults(func=_cmd_export)
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
