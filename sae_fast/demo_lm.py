"""`make demo` on the embedded causal LM, SmolLM2-135M-Instruct: the seed's three uses.

1. Train a TopK SAE (8x, k=32) on the layer-9 residual stream, from an activation cache
   (the model runs once over the training tokens).
2. Pick features from their top contexts: those whose strongest activations are followed
   by one same token (`next_token_features`), and show them.
3. Steer a prompt with the best one (added at 6x its strongest activation): baseline and
   steered greedy continuations, and the change in log P(the token its contexts go on
   with) per generated token. (Its direct logit effects W_dec @ W_U read at layer 9 of 30
   are mostly word pieces with no relation to its contexts, so they are not the measure.)
4. Run a monitor over a generation, token by token, on a combination of two features.
5. Trace one prediction: each feature's attribution to the next-token logit, the error
   term's share, and the top features ablated together against one at a time.
6. Evaluate on held-out tokens: CE loss recovered (vs zero and mean ablation) and KL.
"""

from __future__ import annotations

import argparse
import time

import torch

from .analysis.contexts import render_context
from .analysis.features import feature_report, next_token_features
from .analysis.monitor import Monitor, Rule
from .analysis.steering import steer_report
from .analysis.trace import trace
from .cli import timing_line
from .config import TrainConfig
from .data.activations import load_model
from .data.smollm2 import NAME
from .data.store import read_cache
from .eval.evaluate import evaluate
from .training import train


def _clock(t0: float) -> str:
    return f"[{time.perf_counter() - t0:5.0f}s]"


def main(args: argparse.Namespace) -> int:
    """Run the causal-LM demo with the demo's parsed arguments; returns the exit code."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    cfg = TrainConfig(
        model=NAME,
        hook=args.hook,
        expansion=8,
        k=32,
        steps=args.steps,
        batch_size=512,
        max_tokens=args.max_tokens,
        out=args.out,
        cache=f"{args.out}/activations",
        checkpoint_every=0,
        progress=True,
    )
    result = train(cfg)
    sae, m = result.sae, result.metrics
    print(
        f"\n{_clock(t0)} 1. trained a TopK SAE {sae.d_in} -> {sae.d_sae} (k={sae.k}) on "
        f"{sae.cfg.metadata['train_tokens']:,} tokens of {NAME} {cfg.hook} "
        f"(position 0 and norm outliers dropped: {m.get('dropped_first_position', 0)} + "
        f"{m.get('dropped_norm_outliers', 0)})"
    )
    print(timing_line(result.timings, m))
    model, tok = load_model(NAME)
    windows = result.windows

    # 2. features from their top contexts (read back from the cache, no model pass)
    acts = read_cache(cfg.cache)
    acts = acts.rows(acts.window < len(windows))  # its training rows (held-out ones follow)
    report = feature_report(sae, acts.chunks(8192), n_top=8, n_samples=0, width=0)
    # prefer features that predict a whole word (" version") over word pieces ("ITE"),
    # whitespace or punctuation
    ranked = next_token_features(report, windows)
    words = [c for c in ranked if tok.decode([c.token_id])[:1] == " "]
    words = [c for c in words if tok.decode([c.token_id]).strip().isalpha()]
    picks = words or ranked
    if not picks:
        print("no feature's top contexts agree on a next token; nothing to steer")
        return 1
    print(f"\n{_clock(t0)} 2. features whose top contexts agree on the next token:")
    for c in picks[: args.features]:
        word = tok.convert_ids_to_tokens(c.token_id)
        print(f"feature {c.feature}: {c.share:.0%} of its top contexts go on with {word!r}")
        for ex in report.top_examples(c.feature)[:3]:
            print(f"  {ex.value:7.2f}  {render_context(tok, windows[ex.window], ex.position)}")
    best, second = picks[0], picks[1] if len(picks) > 1 else picks[0]
    f = best.feature

    # 3. steering: 6x the feature's strongest activation in the training data
    value = 6.0 * float(report.maxima[f])
    rep = steer_report(
        model, tok, sae, {f: value}, args.prompt, "add", args.new_tokens, tokens=[best.token_id]
    )
    print(f"\n{_clock(t0)} 3. steering feature {f} (+{value:.1f}):\n{rep.text()}")

    # 4. a monitor over a generation: the two best features, either one firing
    ex = report.top_examples(f)[0]
    w = windows[ex.window]
    prompt = tok.decode(w[max(0, ex.position - 24) : ex.position], skip_special_tokens=True)
    threshold = 0.5 * float(min(report.maxima[f], report.maxima[second.feature]))
    rule = Rule("demo", sorted({f, second.feature}), threshold, combine="any")
    monitor = Monitor(sae, [rule], model, tok)
    text, live, final = monitor.watch_all(prompt, args.new_tokens)
    print(f"\n{_clock(t0)} 4. monitor (features {rule.features} > {threshold:.2f}) on a generation")
    print(f"prompt: {prompt!r}\ngenerated: {text!r}")
    for a in live:
        print(f"  fired at tokens {a.span} {a.text!r} ({a.tokens} token(s))")
    for a in final:
        print(f"  whole span {a.span} {a.text!r}: peak {a.activations}")
    if not final:
        print("  (no alert)")

    # 5. tracing one prediction
    res = trace(model, tok, sae, args.prompt, -1)
    print(f"\n{_clock(t0)} 5. trace of the next token after {args.prompt!r}:")
    print(res.table(top=8))

    # 6. downstream score on held-out tokens
    ev = evaluate(result.sae_dir, model=model, tokenizer=tok, max_tokens=args.eval_tokens)
    print(
        f"\n{_clock(t0)} 6. held-out {ev.n_tokens:,} tokens: FVU {ev.fvu:.3f}, L0 {ev.l0:.1f}, "
        f"CE loss recovered {ev.ce_loss_recovered:.3f} (vs zero ablation), "
        f"{ev.ce_loss_recovered_mean:.3f} (vs mean), KL {ev.kl_div:.3f} nats "
        f"(CE clean {ev.downstream['ce_clean']:.3f}, SAE {ev.downstream['ce_sae']:.3f}, "
        f"zero {ev.downstream['ce_zero']:.3f})"
    )
    print(f"saved the SAE to {result.sae_dir}; total {time.perf_counter() - t0:.0f}s")
    return 0
