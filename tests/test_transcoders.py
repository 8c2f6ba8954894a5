"""Transcoders and skip transcoders (cfg.d_out, cfg.skip): the loss, codes and gradients of
every rule against an independent computation, the sparse path against the dense one, training
from x and y side by side, files, and the errors."""

import json

import pytest
import torch
from conftest import randomize

from saelab import SAE, SAEConfig, TrainConfig, evaluate, train
from saelab.errors import SaelabError
from saelab.io.external import export

D_IN, D_OUT, H = 8, 6, 32
RULES = {
    "topk": {"k": 4},
    "batchtopk": {"k": 4},
    "relu": {},
    "jumprelu": {"k": 4},
    "gated": {},
    "matryoshka": {"k": 4, "matryoshka_widths": [8, 16, 32]},
}


def transcoder(arch, skip=False, d_out=D_OUT, seed=0):
    cfg = SAEConfig(
        arch=arch, d_in=D_IN, d_sae=H, input_scaling="none", d_out=d_out, skip=skip, **RULES[arch]
    )
    sae = randomize(SAE(cfg, seed=seed), seed=seed)
    if skip:
        with torch.no_grad():
            sae.W_skip.normal_(0, 0.3)
    return sae.train()


def test_topk_and_relu_losses_and_gradients_equal_an_independent_computation():
    x, y = torch.randn(20, D_IN), torch.randn(20, D_OUT)
    for arch, skip in (("topk", True), ("relu", False), ("topk", False)):
        sae = transcoder(arch, skip)
        params = {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}
        pre = x @ params["W_enc"] + params["b_enc"]  # no input shift
        if arch == "topk":
            top = torch.relu(pre).topk(4, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        else:
            f = torch.relu(pre)
        y_hat = f @ params["W_dec"] + params["b_dec"]
        if skip:
            y_hat = y_hat + x @ params["W_skip"]
        want = (y - y_hat).square().sum(-1).mean()
        if arch == "relu":  # L1 weighted by decoder row norms, as relu's
            want = want + sae.cfg.l1_coefficient * (f * params["W_dec"].norm(dim=1)).sum(-1).mean()
        want.backward()
        for sparse in (True, False):
            sae.zero_grad()
            out = sae.loss(x, sparse=sparse, target=y)
            out.loss.backward()
            torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
            for name, p in sae.named_parameters():
                torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-4, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(sae.eval()(x), y_hat.detach(), rtol=1e-5, atol=1e-6)
        sae.train()


@pytest.mark.parametrize("arch", RULES)
def test_every_rule_with_y_equal_x_and_no_bias_is_the_autoencoder(arch):
    """A transcoder with d_out = d_in, b_dec = 0, trained to predict its own input, has the
    autoencoder's loss and gradients: the autoencoder's b_dec shift is then zero too."""
    auto = randomize(SAE(SAEConfig(arch=arch, d_in=D_IN, d_sae=H, input_scaling="none",
                                   **RULES[arch]), seed=1), seed=1).train()  # fmt: skip
    trans = transcoder(arch, d_out=D_IN, seed=1)
    with torch.no_grad():
        auto.b_dec.zero_()
        trans.load_state_dict(auto.state_dict(), strict=False)  # all but its output_scale
    x, dead = torch.randn(24, D_IN), torch.zeros(H, dtype=torch.bool)
    dead[::3] = True
    for sparse in (True, False):
        auto.zero_grad(), trans.zero_grad()
        a, t = auto.loss(x, dead, sparse), trans.loss(x, dead, sparse, target=x)
        a.loss.backward(), t.loss.backward()
        torch.testing.assert_close(t.loss, a.loss, rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(auto.named_parameters(), trans.parameters()):
            if name != "b_dec":  # the autoencoder's b_dec also learns through x - b_dec
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_the_sparse_path_equals_the_dense_one_with_a_skip(arch):
    sae = transcoder(arch, skip=True)
    x, y = torch.randn(30, D_IN), torch.randn(30, D_OUT)
    dead = torch.zeros(H, dtype=torch.bool)
    dead[:10] = True
    results = []
    for sparse in (True, False):
        sae.zero_grad()
        out = sae.loss(x, dead, sparse, target=y)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in sae.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_skip_transcoder_learns_a_linear_map_better_than_a_plain_one(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(6000, D_IN)
    y = x @ torch.randn(D_IN, D_OUT) + 0.5
    data = torch.cat([x, y], dim=1)  # x and y side by side, as train takes a transcoder's data
    fvu = {}
    for skip in (False, True):
        sae = SAE(SAEConfig(arch="topk", d_in=D_IN, d_sae=H, k=2, input_scaling="none",
                            d_out=D_OUT, skip=skip), seed=0)  # fmt: skip
        cfg = TrainConfig(batch_size=256, total_tokens=120_000, lr=1e-2, progress=False)
        train(sae, data[:5000], cfg)
        fvu[skip] = evaluate(sae, data[5000:])["fvu"]
    assert fvu[True] < 0.02 < fvu[False]


def test_a_transcoder_round_trips_through_its_directory(tmp_path):
    sae = transcoder("jumprelu", skip=True).eval()
    sae.save(tmp_path / "tc")
    cfg = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert (cfg["d_out"], cfg["skip"]) == (D_OUT, True)
    loaded = SAE.load(tmp_path / "tc")
    x = torch.randn(12, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sae(x))
        torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    assert loaded(x).shape == (12, D_OUT)


def scaled_transcoder(skip=True, s=3.0, s_out=0.02):
    cfg = SAEConfig(arch="topk", d_in=D_IN, d_sae=H, k=4, input_scaling="expected_norm",
                    d_out=D_OUT, skip=skip, input_scale=s, output_scale=s_out)  # fmt: skip
    sae = randomize(SAE(cfg, seed=3), seed=3)
    if skip:
        with torch.no_grad():
            sae.W_skip.normal_(0, 0.3)
    return sae.train()


def test_expected_norm_scales_input_and_target_each_by_its_own_scale():
    """x' = s x, y' = s_out y: the loss is ||y' - (f W_dec + b_dec + x' W_skip)||^2 in the
    scaled units, the output y_hat' / s_out in the target's own; a transcoder defaults to it."""
    s, s_out = 3.0, 0.02
    sae = scaled_transcoder(s=s, s_out=s_out)
    x, y = torch.randn(20, D_IN), torch.randn(20, D_OUT) / 50
    params = {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}
    pre = (s * x) @ params["W_enc"] + params["b_enc"]
    top = torch.relu(pre).topk(4, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    y_hat = f @ params["W_dec"] + params["b_dec"] + (s * x) @ params["W_skip"]
    want = (s_out * y - y_hat).square().sum(-1).mean()
    want.backward()
    for sparse in (True, False):
        sae.zero_grad()
        out = sae.loss(x, sparse=sparse, target=y)
        out.loss.backward()
        torch.testing.assert_close(out.loss, want.detach(), rtol=1e-5, atol=1e-6)
        for name, p in sae.named_parameters():
            torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(sae.eval()(x), y_hat.detach() / s_out, rtol=1e-5, atol=1e-6)
    assert SAEConfig(arch="topk", d_in=8, d_sae=16, k=2, d_out=4).input_scaling == "expected_norm"


def test_a_scaled_transcoder_saves_folded_and_loads_unfolded(tmp_path):
    """On disk the scales are folded (raw x in, raw y out: W_enc s, W_dec / s_out, b_dec / s_out,
    W_skip s / s_out), recorded in metadata; loading restores both scales and the outputs."""
    from safetensors.torch import load_file

    sae = scaled_transcoder(s=3.0, s_out=0.02).eval()
    x = torch.randn(16, D_IN)
    sae.save(tmp_path / "tc")
    raw = load_file(tmp_path / "tc" / "sae.safetensors")
    meta = json.loads((tmp_path / "tc" / "cfg.json").read_text())
    assert meta["metadata"]["folded_input_scale"] == 3.0
    assert meta["metadata"]["folded_output_scale"] == pytest.approx(0.02)
    pre = x @ raw["W_enc"] + raw["b_enc"]
    top = torch.relu(pre).topk(4, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    by_hand = f @ raw["W_dec"] + raw["b_dec"] + x @ raw["W_skip"]
    with torch.no_grad():
        torch.testing.assert_close(by_hand, sae(x), rtol=1e-4, atol=1e-5)
        loaded = SAE.load(tmp_path / "tc")
        torch.testing.assert_close(loaded(x), sae(x), rtol=1e-4, atol=1e-4)
    assert (float(loaded.input_scale), float(loaded.output_scale)) == pytest.approx((3.0, 0.02))
    torch.testing.assert_close(loaded.W_skip, sae.W_skip)


def test_training_estimates_the_input_and_target_scales_apart():
    """s^2 E||x||^2 = d_in and s_out^2 E||y||^2 = d_out, from the source's own x and y columns,
    however different their norms (an MLP's output ~1000 times smaller than its input)."""
    x, y = torch.randn(2048, D_IN) * 5, torch.randn(2048, D_OUT) / 200
    sae = SAE(SAEConfig(arch="topk", d_in=D_IN, d_sae=H, k=4, d_out=D_OUT), seed=0)
    train(sae, torch.cat([x, y], 1), TrainConfig(batch_size=256, total_tokens=512, progress=False))
    assert float(sae.input_scale) ** 2 * x.square().sum(1).mean() == pytest.approx(D_IN, rel=1e-3)
    assert float(sae.output_scale) ** 2 * y.square().sum(1).mean() == pytest.approx(D_OUT, rel=1e-3)


@pytest.mark.parametrize(
    "build, pattern",
    [
        (lambda: SAEConfig(arch="topk", d_in=8, d_sae=16, k=2, skip=True), "skip .* needs d_out"),
        (lambda: SAEConfig(arch="topk", d_in=8, d_sae=16, k=2, d_out=4,
                           input_scaling="per_token"), "not per_token"),
        (lambda: SAEConfig(arch="topk", d_in=8, d_sae=16, k=2, output_scale=2.0),
         "output_scale is a transcoder's"),
        (lambda: SAEConfig(arch="topafa", d_in=8, d_sae=16, d_out=4, input_scaling="none"),
         "topafa transcoders are not supported"),
        (lambda: transcoder("topk").loss(torch.randn(4, D_IN)), "needs its target"),
        (lambda: transcoder("topk").loss(torch.randn(4, D_IN), target=torch.randn(4, 3)),
         r"target must be \[n=4, d_out=6\]"),
        (lambda: transcoder("topk", skip=True).decode(torch.zeros(2, H)), "needs its input"),
        (lambda: train(transcoder("topk"), torch.randn(600, D_IN),
                       TrainConfig(batch_size=64, total_tokens=128, progress=False)),
         "is a transcoder: it takes x and y side by side, d_in \\+ d_out = 8 \\+ 6 = 14"),
        (lambda: export(transcoder("topk"), "/nonexistent", "dictionary_learning"),
         "dictionary_learning has no transcoders"),
        (lambda: export(transcoder("topk"), "/nonexistent", "saelens"),
         "SAELens has no topk transcoder"),
    ],
)  # fmt: skip
def test_bad_transcoder_requests_are_refused_by_name(build, pattern):
    with pytest.raises(SaelabError, match=pattern):
        build()


def test_a_spliced_transcoder_replaces_the_mlp_output_from_its_input():
    from tiny_models import tiny_model

    from saelab.data.hooks import blocks_of
    from saelab.eval.downstream import downstream

    model = tiny_model("llama")
    cfg = SAEConfig(arch="topk", d_in=32, d_sae=64, k=4, input_scaling="none", d_out=32,
                    skip=True, metadata={"target_layer": 1, "target_site": "mlp_out"})  # fmt: skip
    tc = randomize(SAE(cfg, seed=0), seed=0).eval()
    with torch.no_grad():
        tc.W_skip.normal_(0, 0.1)
    ids = torch.randint(1, 128, (3, 10))
    got = downstream(tc, model, ids, layer=1, site="mlp_in")

    def hook(module, args, output):  # independently: the MLP's output from its own input
        out = tc(args[0]).clone()
        out[:, 0] = output[:, 0]
        return out

    handle = blocks_of(model)[1].mlp.register_forward_hook(hook)
    with torch.no_grad():
        logits = model(ids).logits.float()
    handle.remove()
    want = torch.nn.functional.cross_entropy(logits[:, 1:-1].flatten(0, 1), ids[:, 2:].flatten())
    assert abs(got["ce_sae"] - want.item()) < 1e-4
    with torch.no_grad():  # the zero ablation is the MLP's
        handle = blocks_of(model)[1].mlp.register_forward_hook(
            lambda m, a, o: torch.cat([o[:, :1], torch.zeros_like(o[:, 1:])], 1)
        )
        zero = model(ids).logits.float()
        handle.remove()
    ce_zero = torch.nn.functional.cross_entropy(zero[:, 1:-1].flatten(0, 1), ids[:, 2:].flatten())
    assert abs(got["ce_zero"] - ce_zero.item()) < 1e-4
    no_target = SAE(SAEConfig(arch="topk", d_in=32, d_sae=64, k=4, input_scaling="none", d_out=32))
    with pytest.raises(ValueError, match="records no target hook point"):
        downstream(no_target, model, ids, layer=1, site="mlp_in")
    tc.cfg.metadata.update(layer=1, site="mlp_in")
    with pytest.raises(ValueError, match="reads layers.1.mlp_in .* spliced at layers.1.resid_mid"):
        downstream(tc, model, ids, layer=1, site="resid_mid")
