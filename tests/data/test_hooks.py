"""Hook-point names resolve over BERT, GPT-2, GPT-NeoX and Llama module trees (tiny random
configs built from transformers config classes: no download)."""

from __future__ import annotations

import copy

import pytest
import torch

from sae_fast import ConfigError
from sae_fast.data.hooks import (
    capture,
    list_hooks,
    patch,
    patch_from,
    resolve_hook,
    run_to_hook,
)

transformers = pytest.importorskip("transformers")


def _tiny(family: str):
    t = transformers
    torch.manual_seed(0)
    if family == "gpt2":
        return t.GPT2LMHeadModel(
            t.GPT2Config(
                n_layer=2,
                n_embd=32,
                n_head=2,
                vocab_size=100,
                n_positions=64,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    if family == "llama":
        return t.LlamaForCausalLM(
            t.LlamaConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=2,
                num_key_value_heads=2,
                intermediate_size=64,
                vocab_size=100,
            )
        )
    if family == "neox":
        return t.GPTNeoXForCausalLM(
            t.GPTNeoXConfig(
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=2,
                intermediate_size=64,
                vocab_size=100,
            )
        )
    return t.BertModel(
        t.BertConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
        )
    )


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "neox"])
def test_every_hook_resolves_and_residuals_match_hidden_states(family):
    model = _tiny(family).eval()
    hooks = list_hooks(model)
    assert hooks == [
        "embeddings",
        "layers.0.attn_out",
        "layers.0.mlp_in",
        "layers.0.mlp_out",
        "layers.0.residual",
        "layers.1.attn_out",
        "layers.1.mlp_in",
        "layers.1.mlp_out",
        "layers.1.residual",
    ]
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    for hook in hooks:
        with capture(model, hook) as box, torch.no_grad():
            act = run_to_hook(model, box, input_ids=ids)
        assert act.shape == (2, 7, 32), hook
        if hook == "embeddings":
            torch.testing.assert_close(act, hidden[0])
        elif hook == "layers.0.residual":
            torch.testing.assert_close(act, hidden[1])


def test_capture_stops_the_forward_pass_early():
    model = _tiny("gpt2").eval()
    ran = []
    model.transformer.h[1].register_forward_hook(lambda *a: ran.append(1))
    with capture(model, "layers.0.residual") as box:
        run_to_hook(model, box, input_ids=torch.randint(0, 100, (1, 5)))
    assert not ran  # block 1 never ran
    with capture(model, "layers.0.residual", stop=False) as box:
        run_to_hook(model, box, input_ids=torch.randint(0, 100, (1, 5)))
    assert ran


def test_unknown_hook_lists_the_valid_names():
    model = _tiny("llama")
    with pytest.raises(ConfigError, match=r"unknown hook 'layers.7.residual'.*layers.0.attn_out"):
        resolve_hook(model, "layers.7.residual")
    with pytest.raises(ConfigError, match="unknown hook 'blocks.0.hook_resid_post'"):
        resolve_hook(model, "blocks.0.hook_resid_post")
    with pytest.raises(ConfigError, match="cannot find the transformer blocks"):
        list_hooks(torch.nn.Linear(3, 3))


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "neox"])
@pytest.mark.parametrize("hook", ["embeddings", "layers.0.attn_out", "layers.1.mlp_out"])
def test_patch_replaces_the_activation_and_restores_the_model(family, hook):
    model = _tiny(family).eval()
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        clean_out = model(input_ids=ids)[0]
        with capture(model, hook) as box:
            clean = run_to_hook(model, box, input_ids=ids)
        with patch(model, hook, lambda a: 2 * a):
            with capture(model, hook) as box:  # registered after the patch: sees its result
                doubled = run_to_hook(model, box, input_ids=ids)
            patched_out = model(input_ids=ids)[0]
        torch.testing.assert_close(doubled, 2 * clean)
        assert not torch.allclose(patched_out, clean_out)
        with pytest.raises(RuntimeError, match="boom"), patch(model, hook, torch.zeros_like):
            raise RuntimeError("boom")
        torch.testing.assert_close(model(input_ids=ids)[0], clean_out, rtol=0, atol=0)


def _mlp(model, family: str, layer: int):
    """The block's MLP as one function of its input (BERT's is two modules)."""
    if family == "bert":
        block = model.encoder.layer[layer]
        return lambda h: block.output.dense(block.intermediate(h))
    if family == "gpt2":
        return model.transformer.h[layer].mlp
    if family == "neox":
        return model.gpt_neox.layers[layer].mlp
    return model.model.layers[layer].mlp


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "neox"])
def test_mlp_in_is_what_the_mlp_reads_and_one_pass_captures_both(family):
    model = _tiny(family).eval()
    ids = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        with capture(model, "layers.1.mlp_in", target="layers.1.mlp_out") as box:
            x = run_to_hook(model, box, input_ids=ids)
            y = box["target"]
        with capture(model, "layers.1.mlp_out") as box:
            y_alone = run_to_hook(model, box, input_ids=ids)
        torch.testing.assert_close(y, y_alone, rtol=0, atol=0)
        # mlp_in is after the norm: the MLP of it is mlp_out exactly
        torch.testing.assert_close(_mlp(model, family, 1)(x), y)
        # the target before the input in the forward pass works too (stops after both)
        with capture(model, "layers.1.mlp_out", target="layers.0.mlp_in") as box:
            run_to_hook(model, box, input_ids=ids)
            assert set(box) == {"act", "target"}


def test_patch_from_reads_an_earlier_hook_and_refuses_a_later_one():
    model = _tiny("gpt2").eval()
    ids = torch.randint(0, 100, (2, 6))
    mlp = copy.deepcopy(_mlp(model, "gpt2", 0))  # a copy: calling the hooked one would recurse
    with torch.no_grad():
        clean = model(input_ids=ids)[0]
        # replacing mlp_out by the MLP of mlp_in changes nothing: exact splicing
        with patch_from(model, "layers.0.mlp_in", "layers.0.mlp_out", lambda a, src: mlp(src)):
            spliced = model(input_ids=ids)[0]
        torch.testing.assert_close(spliced, clean)
        with patch_from(model, "layers.0.mlp_in", "layers.0.mlp_out", lambda a, s: 0 * a):
            assert not torch.allclose(model(input_ids=ids)[0], clean)
        with (
            pytest.raises(RuntimeError, match="did not run before"),
            patch_from(model, "layers.1.mlp_in", "layers.0.mlp_out", lambda a, s: a),
        ):
            model(input_ids=ids)
        torch.testing.assert_close(model(input_ids=ids)[0], clean, rtol=0, atol=0)
