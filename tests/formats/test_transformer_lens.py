"""TransformerLens hook names <-> sae_fast hooks, which processing an SAE's metadata means,
and what that does to activations (sae_fast/formats/transformer_lens.py). No TransformerLens
here: test_transformer_lens_check.py compares with TransformerLens itself."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from sae_fast.data.hooks import capture_many, run_hooks
from sae_fast.errors import ConfigError, FormatError
from sae_fast.formats import transformer_lens as tl

MAPPED = {
    "hook_embed": "embeddings",
    "blocks.0.hook_resid_pre": "embeddings",
    "blocks.1.hook_resid_pre": "layers.0.residual",
    "blocks.12.hook_resid_pre": "layers.11.residual",
    "blocks.0.hook_resid_post": "layers.0.residual",
    "blocks.11.hook_resid_post": "layers.11.residual",
    "blocks.3.hook_attn_out": "layers.3.attn_out",
    "blocks.3.hook_mlp_out": "layers.3.mlp_out",
    "blocks.3.mlp.hook_in": "layers.3.mlp_in",
    "blocks.3.ln2.hook_normalized": "layers.3.mlp_in",
}
SAE_FAST = ["embeddings", "layers.0.residual", "layers.7.residual", "layers.2.attn_out",
            "layers.2.mlp_in", "layers.2.mlp_out"]  # fmt: skip
BACK = {
    "embeddings": "blocks.0.hook_resid_pre",
    "layers.0.residual": "blocks.0.hook_resid_post",
    "layers.7.residual": "blocks.7.hook_resid_post",
    "layers.2.attn_out": "blocks.2.hook_attn_out",
    "layers.2.mlp_in": "blocks.2.mlp.hook_in",
    "layers.2.mlp_out": "blocks.2.hook_mlp_out",
}
# TransformerLens hooks with no sae_fast equivalent, and a word of why
REFUSED = {
    "blocks.2.hook_resid_mid": "between attention and MLP",
    "blocks.2.hook_mlp_in": "before ln2",
    "blocks.2.attn.hook_z": "per-head",
    "blocks.2.attn.hook_q": "per-head",
    "blocks.2.attn.hook_pattern": "attention scores",
    "blocks.2.attn.hook_attn_scores": "attention scores",
    "blocks.2.mlp.hook_pre": "hidden layer",
    "blocks.2.mlp.hook_post": "hidden layer",
    "blocks.2.ln1.hook_normalized": "attention's normalised input",
    "blocks.2.ln2.hook_scale": "a norm's scale",
    "blocks.2.ln1_post.hook_normalized": "norm after a sublayer",
    "blocks.2.hook_q_input": "per-head copies",
    "hook_pos_embed": "position embedding alone",
    "ln_final.hook_normalized": "not a block's activation",
    "blocks.2.attn.hook_made_up": "not mapped",
}
CWW = {"model_from_pretrained_kwargs": {"center_writing_weights": True}}
NONE: dict = {}


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("name, hook", MAPPED.items())
def test_transformer_lens_names_map_to_sae_fast_hooks(name, hook):
    assert tl.is_transformer_lens_name(name)
    assert tl.hook_from_transformer_lens(name) == hook


@pytest.mark.parametrize("hook", SAE_FAST)
def test_sae_fast_hooks_pass_through_and_map_back(hook):
    assert not tl.is_transformer_lens_name(hook)
    assert tl.hook_from_transformer_lens(hook) == hook
    assert tl.hook_to_transformer_lens(hook) == BACK[hook]
    assert tl.hook_from_transformer_lens(tl.hook_to_transformer_lens(hook)) == hook


@pytest.mark.parametrize("name", MAPPED)
def test_round_trip_from_transformer_lens(name):
    assert tl.hook_to_transformer_lens(name) == name  # supported names pass through
    canonical = tl.hook_to_transformer_lens(tl.hook_from_transformer_lens(name))
    assert tl.hook_from_transformer_lens(canonical) == tl.hook_from_transformer_lens(name)
    assert canonical == {
        "hook_embed": "blocks.0.hook_resid_pre",
        "blocks.1.hook_resid_pre": "blocks.0.hook_resid_post",
        "blocks.12.hook_resid_pre": "blocks.11.hook_resid_post",
        "blocks.3.ln2.hook_normalized": "blocks.3.mlp.hook_in",
    }.get(name, name)


@pytest.mark.parametrize("name, why", REFUSED.items())
def test_unsupported_transformer_lens_hooks_are_refused_with_the_reason(name, why):
    assert tl.is_transformer_lens_name(name)
    with pytest.raises(ConfigError) as err:
        tl.hook_from_transformer_lens(name)
    message = str(err.value)
    assert repr(name) in message and why in message and "supported: hook_embed" in message
    with pytest.raises(ConfigError, match="no sae_fast"):
        tl.hook_to_transformer_lens(name)


@pytest.mark.parametrize("name", ["model.layers.3", "layers.3.resid", "blocks.3", "", "hook"])
def test_names_of_neither_kind_are_refused(name):
    assert not tl.is_transformer_lens_name(name)
    with pytest.raises(ConfigError, match="neither a TransformerLens hook point"):
        tl.hook_from_transformer_lens(name)
    with pytest.raises(ConfigError, match="not a sae_fast hook"):
        tl.hook_to_transformer_lens(name)


def test_non_string_names_are_refused():
    assert not tl.is_transformer_lens_name(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        tl.hook_from_transformer_lens(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- processing


def _flags(p: tl.Processing) -> tuple[bool, ...]:
    return (p.fold_ln, p.center_writing_weights, p.center_unembed, p.fold_value_biases,
            p.refactor_factored_attn_matrices)  # fmt: skip


ALL_DEFAULT = (True, True, True, True, False)  # HookedTransformer.from_pretrained's defaults


@pytest.mark.parametrize(
    "metadata, flags",
    [
        ({}, (False,) * 5),
        ({"model_from_pretrained_kwargs": {}}, (False,) * 5),
        ({"model_from_pretrained_kwargs": None}, (False,) * 5),
        # SAELens's training default since 3.19.2
        ({"model_from_pretrained_kwargs": {"center_writing_weights": False}}, (False,) * 5),
        (CWW, (False, True, False, False, False)),  # gpt2-small-res-jb's override
        ({"model_from_pretrained_kwargs": {"fold_ln": False}}, (False,) * 5),  # transcoders
        ({"model_from_pretrained_kwargs": {"fold_ln": True, "dtype": "bfloat16",
                                           "n_devices": 2}}, (True,) + (False,) * 4),
        ({"metadata": CWW}, (False, True, False, False, False)),  # a whole SAELens cfg.json
        # before SAELens 3.19.2 training used from_pretrained with its default processing
        ({"sae_lens_training_version": "3.13.0"}, ALL_DEFAULT),
        ({"metadata": {"sae_lens_training_version": "2.1.3"}}, ALL_DEFAULT),
        ({"sae_lens_training_version": "3.19.2"}, (False,) * 5),
        ({"sae_lens_training_version": "6.5.0"}, (False,) * 5),
        ({"sae_lens_training_version": None}, (False,) * 5),
        ({"sae_lens_training_version": "unknown"}, (False,) * 5),
        ({"sae_lens_training_version": "3.0.0", **CWW}, (False, True, False, False, False)),
        ({"model_class_name": "AutoModelForCausalLM", **CWW}, (False,) * 5),
        ({"model_class_name": "HookedTransformer", **CWW}, (False, True, False, False, False)),
    ],
)  # fmt: skip
def test_processing_from_metadata(metadata, flags):
    assert _flags(tl.processing_from_metadata(metadata)) == flags


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"center_writing_weights": "yes"}, "center_writing_weights must be true or false"),
        ({"fold_ln": 1}, "fold_ln must be true or false"),
        ({"attn_scores_soft_cap": 30.0}, r"\['attn_scores_soft_cap'\] may change"),
        (["fold_ln"], "must be an object"),
    ],
)
def test_processing_refuses_what_it_cannot_read(kwargs, match):
    with pytest.raises(FormatError, match=match):
        tl.processing_from_metadata({"model_from_pretrained_kwargs": kwargs})


def test_metadata_must_be_an_object():
    with pytest.raises(FormatError, match="metadata must be an object"):
        tl.processing_from_metadata([])  # type: ignore[arg-type]


# ---------------------------------------------------------------- model families


@pytest.mark.parametrize(
    "model_type, centres",
    [("gpt2", True), ("gpt_neo", True), ("gptj", True), ("gpt_neox", True), ("phi", True),
     ("olmo", True), ("llama", False), ("mistral", False), ("qwen2", False), ("gemma", False),
     ("gemma2", False), ("gemma3", False), ("olmo2", False)],
)  # fmt: skip
def test_transformer_lens_centres_layer_norm_models_only(model_type, centres):
    assert tl.transformer_lens_centers(model_type) is centres


def test_traits_from_a_model_or_its_config():
    assert tl.transformer_lens_centers(GPT2Config())
    assert not tl.transformer_lens_centers(LlamaConfig())
    assert tl.model_traits(_gpt2()).mlp_norm == "ln_2"
    with pytest.raises(ConfigError, match="model type 'bert' is not known.*known: gemma"):
        tl.model_traits("bert")
    with pytest.raises(ConfigError, match="has no Hugging Face config.model_type"):
        tl.model_traits(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- the decision table

# (TransformerLens hook, processing, model type) -> transform kind, or the error and a word
TABLE = [
    ("blocks.3.hook_resid_post", NONE, "gpt2", "identity"),
    ("blocks.3.hook_resid_post", NONE, None, "identity"),  # no model needed
    ("blocks.3.hook_resid_post", CWW, "gpt2", "center"),
    ("blocks.3.hook_resid_pre", CWW, "gpt2", "center"),
    ("blocks.0.hook_resid_pre", CWW, "gpt2", "center"),
    ("blocks.3.hook_resid_post", CWW, "gpt_neox", "center"),
    ("blocks.3.hook_resid_post", CWW, "llama", "identity"),  # RMSNorm: not centred
    ("blocks.3.hook_resid_post", CWW, "gemma2", "identity"),
    ("blocks.3.hook_resid_post", CWW, None, (ConfigError, "depends on the model family")),
    ("blocks.3.hook_attn_out", NONE, "gpt2", "identity"),
    ("blocks.3.hook_attn_out", CWW, "gpt2", "center"),
    ("blocks.3.hook_mlp_out", CWW, "gpt2", "center"),
    ("blocks.3.hook_mlp_out", CWW, "llama", "identity"),
    ("blocks.3.hook_attn_out", {"sae_lens_training_version": "3.1.0"}, "gpt2", "center"),
    ("blocks.3.hook_attn_out",
     {"model_from_pretrained_kwargs": {"fold_value_biases": True}}, "gpt2", "identity"),
    ("blocks.3.hook_attn_out", NONE, None, (ConfigError, "depends on the model family")),
    ("blocks.3.hook_attn_out", NONE, "gemma2", (FormatError, "after that norm")),
    ("blocks.3.hook_mlp_out", CWW, "gemma3", (FormatError, "after that norm")),
    ("blocks.3.hook_mlp_out", NONE, "olmo2", (FormatError, "after that norm")),
    ("hook_embed", NONE, "llama", "identity"),
    ("hook_embed", CWW, "gpt_neox", "center"),
    ("hook_embed", NONE, "gpt2", (FormatError, "adds position embeddings")),
    ("hook_embed", NONE, None, (ConfigError, "depends on the model family")),
    ("blocks.3.mlp.hook_in", NONE, None, "identity"),
    ("blocks.3.mlp.hook_in", CWW, "gpt2", "identity"),  # the norm undoes any centring
    ("blocks.3.mlp.hook_in", {"model_from_pretrained_kwargs": {"fold_ln": True}}, "gpt2",
     (ConfigError, "pass the Hugging Face model to")),
    ("blocks.3.ln2.hook_normalized", NONE, None, (ConfigError, "pass the Hugging Face model")),
    ("blocks.3.ln2.hook_normalized", NONE, "gpt2", (ConfigError, "norm's weight and bias")),
    ("blocks.3.hook_resid_mid", NONE, "gpt2", (ConfigError, "no sae_fast")),
    ("layers.3.residual", CWW, None, "identity"),  # a sae_fast hook: trained on HF activations
    ("blocks.3.hook_resid_post", {"hook_head_index": 2}, "gpt2", (FormatError, "no heads")),
    ("blocks.3.hook_resid_post", CWW, "bert", (ConfigError, "not known")),
]  # fmt: skip


@pytest.mark.parametrize("tl_hook, metadata, model, expected", TABLE)
def test_transform_decision_table(tl_hook, metadata, model, expected):
    if isinstance(expected, tuple):
        with pytest.raises(expected[0], match=expected[1]):
            tl.activation_transform(metadata, tl_hook, model)
        return
    t = tl.activation_transform(metadata, tl_hook, model)
    assert t.kind == expected and t.hook == tl.hook_from_transformer_lens(tl_hook) and t.reason


def test_center_transform_there_and_back():
    t = tl.activation_transform(CWW, "blocks.0.hook_resid_post", "gpt2")
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0)) + 3.0
    y = t.to_transformer_lens(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(y, x - x.mean(-1, keepdim=True))
    torch.testing.assert_close(t.from_transformer_lens(y, x), x)
    with pytest.raises(ValueError, match="needs the Hugging Face activation"):
        t.from_transformer_lens(y)


def test_identity_transform_is_the_identity():
    t = tl.activation_transform(NONE, "blocks.0.hook_resid_post", "gpt2")
    x = torch.randn(3, 8)
    assert t.to_transformer_lens(x) is x and t.from_transformer_lens(x) is x


# ---------------------------------------------------------------- norm affine on real models


def _randomise_norms(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("ln" in name or "norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif ("ln" in name or "norm" in name) and name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=64)
    return _randomise_norms(GPT2LMHeadModel(cfg), 1)


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, vocab_size=64, max_position_embeddings=32)  # fmt: skip
    return _randomise_norms(LlamaForCausalLM(cfg), 2)


def _gemma2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       vocab_size=64, max_position_embeddings=32)  # fmt: skip
    return _randomise_norms(Gemma2ForCausalLM(cfg), 3)


# (model, the block's norm before the MLP, LayerNorm?)
MODELS = [(_gpt2, "ln_2", True), (_llama, "post_attention_layernorm", False),
          (_gemma2, "pre_feedforward_layernorm", False)]  # fmt: skip


@pytest.mark.parametrize("make, norm_name, layer_norm", MODELS)
@pytest.mark.parametrize("tl_hook, metadata", [
    ("blocks.1.ln2.hook_normalized", NONE),
    ("blocks.1.mlp.hook_in", {"model_from_pretrained_kwargs": {"fold_ln": True}}),
    ("blocks.1.mlp.hook_in", {"sae_lens_training_version": "3.10.0"}),  # legacy: fold_ln
])  # fmt: skip
def test_affine_recovers_the_normalised_residual(make, norm_name, layer_norm, tl_hook, metadata):
    """TransformerLens's value there is the MLP norm's input, normalised without weight or
    bias: recomputed here from that input, independently of the transform."""
    model = make()
    t = tl.activation_transform(metadata, tl_hook, model)
    assert t.kind == "affine" and t.hook == "layers.1.mlp_in"
    blocks = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    norm = getattr(blocks[1], norm_name)
    seen = {}
    handle = norm.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(4))
    try:
        with torch.no_grad(), capture_many(model, ["layers.1.mlp_in"]) as box:
            mlp_in = run_hooks(model, box, input_ids=ids)["layers.1.mlp_in"]
    finally:
        handle.remove()
    x = seen["x"]
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-5))
    c = x - x.mean(-1, keepdim=True) if layer_norm else x
    want = c / torch.sqrt(c.pow(2).mean(-1, keepdim=True) + eps)
    torch.testing.assert_close(t.to_transformer_lens(mlp_in), want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t.from_transformer_lens(want), mlp_in, atol=1e-5, rtol=1e-4)
    assert float((mlp_in - want).abs().max()) > 1e-2  # the norm's affine mattered


def test_affine_refusals():
    model = _gpt2()
    with torch.no_grad():
        model.transformer.h[1].ln_2.weight[3] = 0.0
    with pytest.raises(FormatError, match="zero weights"):
        tl.activation_transform(NONE, "blocks.1.ln2.hook_normalized", model)
    tl.activation_transform(NONE, "blocks.0.ln2.hook_normalized", model)  # layer 0 is fine
    model.transformer.h[0].ln_2 = torch.nn.RMSNorm(32)  # no centring: not GPT-2's LayerNorm
    with pytest.raises(FormatError, match=r"ln_2 \(RMSNorm\) does not compute normalise"):
        tl.activation_transform(NONE, "blocks.0.ln2.hook_normalized", model)
    model.transformer.h[0].ln_2 = torch.nn.Identity()
    with pytest.raises(FormatError, match="cannot tell the width of Identity"):
        tl.activation_transform(NONE, "blocks.0.ln2.hook_normalized", model)
    with pytest.raises(ConfigError, match="the model has 2 blocks"):
        tl.activation_transform(NONE, "blocks.5.ln2.hook_normalized", model)


def test_norm_without_weights_is_the_identity():
    model = _gpt2()
    with torch.no_grad():
        model.transformer.h[1].ln_2.weight.fill_(1.0)
        model.transformer.h[1].ln_2.bias.zero_()
    t = tl.activation_transform(NONE, "blocks.1.ln2.hook_normalized", model)
    assert t.kind == "identity" and "has none" in t.reason
