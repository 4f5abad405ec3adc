"""sae_fast's TransformerLens mapping (sae_fast/formats/transformer_lens.py) against
TransformerLens itself, offline: test_transformer_lens_check.py runs it in the peer
environment, where TransformerLens (and SAELens, for `HookedSAETransformer`'s `mlp.hook_in`)
are installed and sae_fast is imported from the source tree.

    PYTHONPATH=. benchmarks/peers/.venv/bin/python tests/formats/transformer_lens_check.py

No model is downloaded. Tiny random Hugging Face models, norm weights and every bias random
too (GPT-2: LayerNorm, learned positions; Pythia/GPT-NeoX: LayerNorm, rotary, parallel
blocks; Llama: RMSNorm, rotary, grouped-query attention; Gemma 2: RMSNorm of 1 + weight,
norms after attention and MLP too), are saved to a temporary directory, which
TransformerLens's own loaders read: `get_pretrained_model_config` and
`get_pretrained_state_dict` accept a local directory, `HookedTransformer.from_pretrained`
does not (Gemma 2, which TransformerLens configures by official name only, gets its
gemma-2-2b settings at the tiny sizes). Each is processed as
`from_pretrained_no_processing(**kwargs)` would for several `model_from_pretrained_kwargs`
(`load_and_process_state_dict` with those flags, the rest off). For every TransformerLens
hook sae_fast maps, the Hugging Face activation (`sae_fast.data.hooks`) through
`activation_transform` must equal TransformerLens's within TOL, and back; it must refuse
(FormatError) exactly at EXPECTED_REFUSALS, and there the plain Hugging Face activation must
really differ from TransformerLens's. The last line is `RESULT {json}`; the exit status is 1 on any
failure.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

TOL = 1e-4  # fp32, max |difference|
DIFFERENT = 1e-3  # a refusal is warranted when the plain activations differ by more
SEQ, BATCH, VOCAB = 12, 2, 128

# model_from_pretrained_kwargs checked on every model (SAELens's no-processing default,
# gpt2-small-res-jb's override, the pre-3.19.2 default processing, fold_ln alone)
PROCESSINGS = {
    "none": {},
    "cww": {"center_writing_weights": True},
    "legacy": {
        "fold_ln": True,
        "center_writing_weights": True,
        "center_unembed": True,
        "fold_value_biases": True,
    },
    "fold_ln": {"fold_ln": True},
    "fvb": {"fold_value_biases": True},
}
# refactor_factored_attn_matrices needs fold_ln; checked on GPT-2 only
REFACTOR = {**PROCESSINGS["legacy"], "refactor_factored_attn_matrices": True}
# (model, hook) where activation_transform must refuse: GPT-2 adds position embeddings to
# hook_embed, Gemma 2 normalises attention and MLP outputs before TransformerLens hooks them
EXPECTED_REFUSALS = {("gpt2", "hook_embed"), ("gemma2", "hook_attn_out"),
                     ("gemma2", "hook_mlp_out")}  # fmt: skip
# TransformerLens hooks hook_from_transformer_lens refuses (hook_mlp_in exists only with
# use_hook_mlp_in, hook_resid_mid not in parallel blocks)
REFUSED_NAMES = ("hook_resid_mid", "hook_mlp_in", "attn.hook_z", "mlp.hook_post")


def _hf_models():
    """(name, Hugging Face model) of each tiny random model."""
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    small = dict(vocab_size=VOCAB, initializer_range=0.1)
    configs = {
        "gpt2": (GPT2LMHeadModel, GPT2Config(
            n_layer=2, n_embd=64, n_head=4, n_positions=32, n_ctx=32, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, **small)),
        "pythia": (GPTNeoXForCausalLM, GPTNeoXConfig(
            hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, rotary_pct=0.5, use_parallel_residual=True,
            hidden_dropout=0.0, attention_dropout=0.0, **small)),
        "llama": (LlamaForCausalLM, LlamaConfig(
            hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
            **small)),
        "gemma2": (Gemma2ForCausalLM, Gemma2Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
            max_position_embeddings=64, sliding_window=4096, rms_norm_eps=1e-6,
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            hidden_activation="gelu_pytorch_tanh", **small)),
    }  # fmt: skip
    for seed, (name, (cls, cfg)) in enumerate(configs.items()):
        torch.manual_seed(seed)
        model = cls(cfg).eval()
        g = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                is_norm = "ln" in pname or "norm" in pname
                if is_norm and pname.endswith("weight"):
                    p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
                elif pname.endswith("bias"):
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
        yield name, model


def _gemma2_cfg(hf_config) -> dict:
    """TransformerLens's Gemma 2 config (its gemma-2-2b entry: it knows Gemma 2 by official
    name only) at the tiny model's sizes."""
    return {
        "d_model": hf_config.hidden_size, "d_head": hf_config.head_dim,
        "n_heads": hf_config.num_attention_heads, "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers, "n_ctx": hf_config.max_position_embeddings,
        "eps": hf_config.rms_norm_eps, "d_vocab": hf_config.vocab_size,
        "act_fn": "gelu_pytorch_tanh", "initializer_range": 0.02, "normalization_type": "RMS",
        "rotary_base": 10000.0, "positional_embedding_type": "rotary", "use_attn_scale": True,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "window_size": hf_config.sliding_window, "use_local_attn": True,
        "attn_types": ["local", "global"] * (hf_config.num_hidden_layers // 2),
        "attn_scores_soft_cap": 50.0, "output_logits_soft_cap": 30.0, "gated_mlp": True,
        "final_rms": True, "use_normalization_before_and_after": True,
        "original_architecture": "Gemma2ForCausalLM", "tokenizer_name": None,
    }  # fmt: skip


def _tl_model(directory: Path, hf_model, flags: dict):
    """TransformerLens's model of the one saved in `directory`, processed by `flags` the way
    `from_pretrained_no_processing(**flags)` does (its loaders, its processing)."""
    from sae_lens import HookedSAETransformer
    from transformer_lens import loading_from_pretrained as loading

    every = {
        "fold_ln": False,
        "center_writing_weights": False,
        "center_unembed": False,
        "fold_value_biases": False,
        "refactor_factored_attn_matrices": False,
        **flags,
    }
    convert = loading.convert_hf_model_config
    if hf_model.config.model_type == "gemma2":
        loading.convert_hf_model_config = lambda *a, **k: _gemma2_cfg(hf_model.config)
    try:
        cfg = loading.get_pretrained_model_config(
            str(directory), fold_ln=every["fold_ln"], device="cpu", dtype=torch.float32
        )
    finally:
        loading.convert_hf_model_config = convert
    cfg.tokenizer_name = None  # token ids are given; the directory holds no tokenizer
    state = loading.get_pretrained_state_dict(str(directory), cfg, hf_model)
    model = HookedSAETransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(state, **every)
    return model.eval()


def _tl_hooks(n_layers: int) -> list[str]:
    names = ["hook_embed"]
    for i in range(n_layers):
        names += [f"blocks.{i}.{part}" for part in (
            "hook_resid_pre", "hook_attn_out", "mlp.hook_in", "ln2.hook_normalized",
            "hook_mlp_out", "hook_resid_post")]  # fmt: skip
    return names


def check_model(name: str, hf_model, flags_by_case: dict[str, dict]) -> list[dict]:
    """Every mapped hook of `hf_model` under every processing of `flags_by_case`."""
    from sae_fast.data.hooks import capture_many, list_hooks, run_hooks
    from sae_fast.errors import ConfigError, FormatError
    from sae_fast.formats import transformer_lens as tlmap

    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), capture_many(hf_model, list_hooks(hf_model)) as box:
        hf = dict(run_hooks(hf_model, box, input_ids=tokens))
    n_layers = hf_model.config.num_hidden_layers
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlcheck_") as tmp:
        directory = Path(tmp) / "model"
        hf_model.save_pretrained(directory)
        for case, flags in flags_by_case.items():
            tl_model = _tl_model(directory, hf_model, flags)
            with torch.no_grad():
                _, cache = tl_model.run_with_cache(tokens)
            metadata = {"model_from_pretrained_kwargs": flags}
            for tl_hook in _tl_hooks(n_layers):
                want = cache[tl_hook]
                row = {"model": name, "processing": case, "tl_hook": tl_hook}
                hook = tlmap.hook_from_transformer_lens(tl_hook)
                x = hf[hook]
                centred = x - x.mean(-1, keepdim=True)
                row.update(hook=hook, scale=float(want.abs().max()),
                           plain=float((x - want).abs().max()),
                           centred=float((centred - want).abs().max()))  # fmt: skip
                refuse = (name, tl_hook.split(".")[-1]) in EXPECTED_REFUSALS
                try:
                    t = tlmap.activation_transform(metadata, tl_hook, hf_model)
                except FormatError as err:
                    ok = refuse and row["plain"] > DIFFERENT  # and it had to
                    row.update(kind="refused", message=str(err), ok=ok)
                else:
                    err = float((t.to_transformer_lens(x) - want).abs().max())
                    back = float((t.from_transformer_lens(want, x) - x).abs().max())
                    row.update(kind=t.kind, err=err, back=back,
                               ok=not refuse and max(err, back) <= TOL)  # fmt: skip
                rows.append(row)
            for part in REFUSED_NAMES:  # refused by name; whether TransformerLens has it
                tl_hook = f"blocks.0.{part}"
                row = {"model": name, "processing": case, "tl_hook": tl_hook,
                       "in_transformer_lens": tl_hook in cache}  # fmt: skip
                try:
                    row.update(kind="mapped", hook=tlmap.hook_from_transformer_lens(tl_hook))
                except ConfigError as err:
                    row.update(kind="name refused", message=str(err))
                row["ok"] = row["kind"] == "name refused"
                rows.append(row)
    return rows


def _show(row: dict) -> str:
    head = f"{row['model']:7s} {row['processing']:8s} {row['tl_hook']:28s}"
    status = "ok  " if row["ok"] else "FAIL"
    if "err" in row:
        return (
            f"{status} {head} -> {row['hook']:18s} {row['kind']:8s} err {row['err']:.1e} "
            f"back {row['back']:.1e} (plain {row['plain']:.1e}, |act| {row['scale']:.2g})"
        )
    if "plain" in row:
        return f"{status} {head} -> refused: plain differs by {row['plain']:.1e}"
    return f"{status} {head} -> {row['kind']}"


def main() -> int:
    from importlib.metadata import version

    import transformer_lens  # noqa: F401  (fails here, clearly, outside the peer env)

    rows = []
    for name, hf_model in _hf_models():
        cases = {**PROCESSINGS, **({"refactor": REFACTOR} if name == "gpt2" else {})}
        rows += check_model(name, hf_model, cases)
    for row in rows:
        print(_show(row))
    failures = [r for r in rows if not r["ok"]]
    summary = {
        "transformer_lens": version("transformer_lens"),
        "rows": rows,
        "failures": len(failures),
    }
    print("RESULT " + json.dumps(summary))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
