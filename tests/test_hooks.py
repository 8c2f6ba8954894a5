"""Hook sites against transformers' own outputs, for a tiny model of every family."""

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from saelab.data.hooks import SITES, HookPoint, SiteError, blocks_of, harvest, harvest_many, splice


def _reference(model, ids, layer, site):
    """The activation from a full forward pass with an independent hook, or computed from the
    block's own modules: resid_mid = resid_pre + attn_out (BERT: its attention's LayerNorm of
    that), mlp_in = the pre-MLP norm of resid_mid (GPT-NeoX, parallel: of resid_pre)."""
    blocks = blocks_of(model)
    block = blocks[layer]
    if site in ("resid_mid", "mlp_in"):
        pre = _reference(model, ids, layer, "resid_pre")
        attn = _reference(model, ids, layer, "attn_out")
        if hasattr(block, "intermediate"):  # BERT: post-norm; the MLP reads resid_mid
            return block.attention.output.LayerNorm(pre + attn)
        if site == "resid_mid":
            return pre + attn
        if hasattr(block, "use_parallel_residual"):  # GPT-NeoX, parallel by default
            return block.post_attention_layernorm(pre)
        return (getattr(block, "post_attention_layernorm", None) or block.ln_2)(pre + attn)
    if site == "resid_pre":
        return model(ids, output_hidden_states=True).hidden_states[layer]
    if site == "resid_post" and layer < len(blocks) - 1:
        return model(ids, output_hidden_states=True).hidden_states[layer + 1]
    block = blocks[layer]
    module = {
        "resid_post": block,
        "attn_out": block.attention.output.dense
        if hasattr(block, "intermediate")
        else getattr(block, "self_attn", None) or getattr(block, "attn", None) or block.attention,
        "mlp_out": block.output.dense if hasattr(block, "intermediate") else block.mlp,
    }[site]
    seen = []
    handle = module.register_forward_hook(
        lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o)
    )
    model(ids)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", SITES)
def test_every_site_matches_transformers(family, site):
    model = tiny_model(family)
    ids = torch.randint(1, 128, (2, 9))
    if family == "gpt_neox" and site == "resid_mid":
        with pytest.raises(SiteError, match="in parallel .*no resid_mid"):
            harvest(model, ids, 0, site)
        return
    for layer in (0, 2):
        got = harvest(model, ids, layer, site)
        assert got.shape == (2, 9, 32)
        torch.testing.assert_close(got, _reference(model, ids, layer, site), rtol=1e-5, atol=1e-5)


def test_a_sequential_gpt_neox_has_resid_mid():
    import transformers as T

    config = T.GPTNeoXConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        vocab_size=128, use_parallel_residual=False,
    )  # fmt: skip
    model = T.AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(1, 128, (2, 7))
    block = blocks_of(model)[1]
    pre, attn = harvest(model, ids, 1, "resid_pre"), harvest(model, ids, 1, "attn_out")
    torch.testing.assert_close(harvest(model, ids, 1, "resid_mid"), pre + attn)
    torch.testing.assert_close(
        harvest(model, ids, 1, "mlp_in"), block.post_attention_layernorm(pre + attn)
    )


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_many_points_in_one_pass_equal_separate_harvests(family):
    model = tiny_model(family)
    ids = torch.randint(1, 128, (2, 9))
    points = [HookPoint(layer, site) for layer in (0, 1) for site in SITES]
    module = "transformer.h.1.mlp" if family == "gpt2" else "model.layers.1.mlp"
    if family == "bert":
        module = "bert.encoder.layer.1.intermediate"
    points += [HookPoint(None, module), HookPoint(None, module + ":input")]
    got = harvest_many(model, ids, points)
    for point in points:
        alone = harvest(model, ids, point.layer, point.site)
        torch.testing.assert_close(got[point.name], alone, rtol=0, atol=0)
    torch.testing.assert_close(got[module + ":input"], got["layers.1.mlp_in"], rtol=0, atol=0)
    later = []
    blocks_of(model)[2].register_forward_pre_hook(lambda m, a: later.append(1))
    harvest_many(model, ids, points)
    assert later == []  # stopped after the deepest point, layer 1


def test_last_block_resid_post_is_before_the_final_norm():
    model = tiny_model("llama")
    ids = torch.randint(1, 128, (1, 5))
    hidden = model(ids, output_hidden_states=True).hidden_states
    got = harvest(model, ids, 2, "resid_post")
    assert not torch.allclose(got, hidden[3])
    torch.testing.assert_close(model.model.norm(got), hidden[3])


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_stops_after_the_hooked_block(family):
    model = tiny_model(family)
    later = []
    blocks_of(model)[2].register_forward_pre_hook(lambda m, a: later.append(1))
    harvest(model, torch.randint(1, 128, (1, 6)), 1, "resid_post")
    assert later == []


def test_bad_layer_and_site_list_what_exists():
    model = tiny_model("gpt2")
    with pytest.raises(SiteError, match=r"layer 3 out of range: .* has 3 blocks \(0..2\)"):
        harvest(model, torch.ones(1, 3, dtype=torch.long), 3, "resid_post")
    with pytest.raises(SiteError, match="unknown site 'mlp_mid'; sites: resid_pre, attn_out"):
        harvest(model, torch.ones(1, 3, dtype=torch.long), 0, "mlp_mid")
    with pytest.raises(SiteError, match="has no module 'transformer.h.1.mpl'; transformer.h.1 has"):
        harvest(model, torch.ones(1, 3, dtype=torch.long), None, "transformer.h.1.mpl")
    with pytest.raises(SiteError, match="named twice"):
        harvest_many(model, torch.ones(1, 3, dtype=torch.long), [HookPoint(0, "mlp_in")] * 2)


def test_gemma_2_resid_mid_is_after_its_post_attention_norm():
    import transformers as T

    config = T.Gemma2Config(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, vocab_size=128,
    )  # fmt: skip
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    for p in model.parameters():  # norms start at zero weight in Gemma: make them matter
        torch.nn.init.normal_(p, std=0.3)
    ids = torch.randint(1, 128, (2, 7))
    block = blocks_of(model)[1]
    pre, attn = harvest(model, ids, 1, "resid_pre"), harvest(model, ids, 1, "attn_out")
    mid = pre + block.post_attention_layernorm(attn)
    torch.testing.assert_close(harvest(model, ids, 1, "resid_mid"), mid)
    torch.testing.assert_close(
        harvest(model, ids, 1, "mlp_in"), block.pre_feedforward_layernorm(mid)
    )
    out = harvest(model, ids, 1, "resid_post")
    torch.testing.assert_close(
        out, mid + block.post_feedforward_layernorm(harvest(model, ids, 1, "mlp_out"))
    )


def test_resid_mid_is_not_spliced_where_the_residual_is_no_module_boundary():
    model = tiny_model("llama")
    with pytest.raises(SiteError, match="resid_mid of LlamaForCausalLM cannot be spliced"):
        with splice(model, 0, "resid_mid", lambda a: a):
            pass
    ids = torch.randint(1, 128, (1, 6))
    with splice(model, 1, "mlp_in", lambda a: a * 0):  # the MLP sees zeros: its output is its bias
        zero_in = harvest(model, ids, 1, "mlp_out")
    torch.testing.assert_close(zero_in, blocks_of(model)[1].mlp(torch.zeros(1, 6, 32)))
