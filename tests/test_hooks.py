"""Hook sites against transformers' own outputs, for a tiny model of every family."""

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from saelab.data.hooks import SITES, SiteError, blocks_of, harvest


def _reference(model, ids, layer, site):
    """The activation from a full forward pass with an independent hook."""
    blocks = blocks_of(model)
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
    for layer in (0, 2):
        got = harvest(model, ids, layer, site)
        assert got.shape == (2, 9, 32)
        torch.testing.assert_close(got, _reference(model, ids, layer, site), rtol=1e-5, atol=1e-5)


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
    with pytest.raises(SiteError, match="unknown site 'resid_mid'; sites: resid_pre, resid_post"):
        harvest(model, torch.ones(1, 3, dtype=torch.long), 0, "resid_mid")
