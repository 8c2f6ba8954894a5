"""Each activation rule against an independent computation."""

import numpy as np
import pytest
import torch
from conftest import make_sae, randomize

from saelab.sae import ThresholdNotEstimated
from saelab.sae.architecture import Collectives
from saelab.sae.batchtopk import smallest_active
from saelab.sae.jumprelu import JumpReLU, Step
from saelab.sae.registry import ARCHITECTURES
from saelab.sae.relu import RELU_ENCODER_INIT_SCALE
from saelab.sae.sparse import RowTiles
from saelab.sae.topafa import chosen_k


def test_topk_keeps_exactly_k_largest_per_row():
    sae = randomize(make_sae("topk", k=5))
    x = torch.randn(50, 16)
    f = sae.encode(x).detach().numpy()
    pre = sae.pre_activation(x).detach().numpy()
    for row, code in zip(pre, f):
        want = np.zeros_like(row)
        top = np.argsort(-row)[:5]
        want[top] = np.maximum(row[top], 0)
        np.testing.assert_allclose(code, want, rtol=1e-6)
        assert (code > 0).sum() == min(5, (row > 0).sum())


def _training_step_threshold(sae, x):
    """What a training step does to the threshold: the loss's smallest kept value, then the
    update."""
    from saelab.sae.batchtopk import update_threshold

    out = sae.loss(x)
    update_threshold(sae, smallest_active(out.code))
    return out


def test_batchtopk_training_keeps_n_times_k_over_the_batch():
    sae = randomize(make_sae("batchtopk", k=3)).train()
    x = torch.randn(40, 16)
    f = sae.encode(x).detach().numpy()
    a = np.maximum(sae.pre_activation(x).detach().numpy(), 0)
    assert (f > 0).sum() == 40 * 3
    cutoff = np.sort(a.ravel())[-40 * 3]
    np.testing.assert_allclose(f, np.where(a >= cutoff, a, 0), rtol=1e-6)
    per_sample = (f > 0).sum(1)
    assert per_sample.min() != per_sample.max()  # variable allocation, mean k
    for sparse in (True, False):
        fresh = randomize(make_sae("batchtopk", k=3)).train()
        out = fresh.loss(x, sparse=sparse)
        assert smallest_active(out.code).item() == pytest.approx(cutoff, rel=1e-6)
    _training_step_threshold(sae, x)
    assert sae.threshold.item() == pytest.approx(cutoff, rel=1e-6)


def test_encoding_in_training_mode_never_moves_the_threshold():
    sae = randomize(make_sae("batchtopk", k=3)).train()
    sae.encode(torch.randn(40, 16))
    assert torch.isnan(sae.threshold)  # no training step yet
    _training_step_threshold(sae, torch.randn(40, 16))
    theta = sae.threshold.clone()
    for _ in range(3):
        sae.encode(torch.randn(40, 16) * 5)
        sae(torch.randn(40, 16))
    assert sae.threshold == theta and sae.threshold_updates.item() == 1


def test_batchtopk_threshold_is_a_mean_then_an_ema_of_batch_minima():
    sae = randomize(make_sae("batchtopk", k=3, threshold_momentum=0.75)).train()
    minima = []
    for _ in range(6):
        x = torch.randn(20, 16)
        f = sae.encode(x)
        minima.append(f[f > 0].min().item())
        _training_step_threshold(sae, x)
    want = sum(minima[:4]) / 4  # a plain mean while 1 - 1/t < 0.75
    for m in minima[4:]:
        want = 0.75 * want + 0.25 * m
    assert sae.threshold.item() == pytest.approx(want, rel=1e-5)


def test_batchtopk_eval_is_batch_independent():
    sae = randomize(make_sae("batchtopk", k=3)).train()
    _training_step_threshold(sae, torch.randn(64, 16))
    sae.eval()
    x = torch.randn(30, 16)
    together = sae.encode(x).detach()
    alone = torch.cat([sae.encode(x[i : i + 1]) for i in range(30)]).detach()
    shuffled = sae.encode(torch.cat([torch.randn(7, 16), x.flip(0)]))[7:].flip(0).detach()
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(together, shuffled)
    a = torch.relu(sae.pre_activation(x)).detach()
    torch.testing.assert_close(together, torch.where(a > sae.threshold, a, 0))


def test_batchtopk_refuses_dense_codes_before_threshold_exists():
    sae = make_sae("batchtopk").eval()
    with pytest.raises(ThresholdNotEstimated, match="threshold"):
        sae.encode(torch.randn(4, 16))


def test_jumprelu_gradients_equal_straight_through_formulas():
    eps = 0.5
    pre = torch.tensor([[0.1, 0.9, 1.2, 2.0], [0.8, 1.1, -1.0, 3.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 1.0, 1.0], requires_grad=True)
    grad_out = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    f = JumpReLU.apply(pre, theta, eps)
    (f * grad_out).sum().backward()
    # hand computation: K((pre - theta)/eps) = 1 where |pre - theta| < eps / 2 = 0.25
    kernel = [[0, 1, 1, 0], [1, 1, 0, 0]]
    want_theta = [
        -(1.0 / eps) * sum(kernel[r][c] * grad_out[r][c].item() for r in range(2)) for c in range(4)
    ]
    np.testing.assert_allclose(theta.grad.numpy(), want_theta)
    np.testing.assert_allclose(pre.grad.numpy(), (grad_out * (pre > theta)).detach().numpy())
    np.testing.assert_allclose(f.detach().numpy(), (pre * (pre > theta)).detach().numpy())

    theta.grad = None
    Step.apply(pre, theta, eps).sum().backward()
    want_l0 = [-(1.0 / eps) * sum(kernel[r][c] for r in range(2)) for c in range(4)]
    np.testing.assert_allclose(theta.grad.numpy(), want_l0)


def test_jumprelu_target_mode_raises_lambda_above_target():
    sae = randomize(make_sae("jumprelu", k=2)).train()
    before = sae.l0_lambda.item()
    out = sae.loss(torch.randn(32, 16))  # L0 >> 2 at these thresholds: lambda must grow
    sae.arch.after_step(sae, out)
    assert sae.l0_lambda.item() > before


def test_jumprelu_multiplier_never_turns_negative_and_is_reported():
    """Below its target L0 the multiplier stays at 0 (projected), so the L0 term is never a
    reward; eval.json and the history report it."""
    sae = randomize(make_sae("jumprelu", k=60)).train()
    for _ in range(3):
        out = sae.loss(torch.randn(32, 16))
        assert out.l0.item() < 60
        sae.arch.after_step(sae, out)
        assert sae.l0_lambda.item() == 0.0
    assert sae.arch.evaluation(sae, {}) == {"l0_lambda": 0.0} == sae.arch.record(sae)


def _brute_force_k(a, norms, target):
    scores = (a * norms) ** 2
    order = np.argsort(-scores, kind="stable")
    best, best_k = np.inf, None
    for j in range(1, len(a) + 1):
        gap = abs(np.sqrt(scores[order[:j]].sum()) - target)
        if gap < best - 1e-9:
            best, best_k = gap, j
    return best_k


def test_topafa_k_equals_brute_force_search():
    sae = randomize(make_sae("topafa", d_sae=24))
    x = torch.randn(40, 16) * torch.rand(40, 1) * 3
    pre = sae.pre_activation(x).detach()
    a = torch.relu(pre)
    k_star, _ = chosen_k(sae, a, x)
    norms = sae.W_dec.norm(dim=1).detach().numpy()
    for i in range(40):
        target = (x[i] - sae.b_dec).norm().item()
        assert k_star[i].item() == _brute_force_k(a[i].numpy(), norms, target)
    f = sae.encode(x)
    assert ((f > 0).sum(1) <= k_star).all()


def test_topafa_edge_cases():
    sae = make_sae("topafa", d_in=4, d_sae=4)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
    zero = torch.zeros(1, 4)  # target 0 keeps one latent
    assert chosen_k(sae, torch.tensor([[3.0, 1.0, 0.0, 0.0]]), zero)[0].item() == 1
    small = torch.tensor([[0.1, 0.1, 0.0, 0.0]])  # target 100 > all mass: keep all positive
    assert chosen_k(sae, small, torch.tensor([[100.0, 0, 0, 0]]))[0].item() == 2


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_decoder_rows_stay_unit_norm_after_steps(arch):
    from saelab import TrainConfig, train

    sae = make_sae(arch, k=4)
    train(
        sae,
        torch.randn(2048, 16),
        TrainConfig(batch_size=256, lr=1e-2, total_tokens=2048, progress=False),
    )
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    assert not torch.allclose(sae.W_dec, make_sae(arch, k=4).W_dec)  # it did train


def test_remove_parallel_gradient_leaves_orthogonal_component():
    sae = randomize(make_sae("topk"))
    g = torch.randn_like(sae.W_dec)
    sae.W_dec.grad = g.clone()
    sae.remove_parallel_gradient()
    w = sae.W_dec.detach()
    want = g - (g * w).sum(1, keepdim=True) * w
    torch.testing.assert_close(sae.W_dec.grad, want)
    torch.testing.assert_close((sae.W_dec.grad * w).sum(1), torch.zeros(64), atol=1e-5, rtol=0)


def test_auxk_loss_matches_hand_computation():
    from saelab.sae.auxk import aux_loss

    sae = randomize(make_sae("topk", aux_k=2))
    x, x_hat, pre = torch.randn(5, 16), torch.randn(5, 16), torch.randn(5, 64)
    dead = torch.zeros(64, dtype=torch.bool)
    assert aux_loss(sae, x, x_hat, pre, dead).item() == 0
    dead[[3, 10, 20]] = True
    want = 0.0
    for t in range(5):
        a = {i: max(pre[t, i].item(), 0) for i in (3, 10, 20)}
        top = sorted(a, key=a.get, reverse=True)[:2]
        e_hat = sum(a[i] * sae.W_dec[i].detach() for i in top)
        want += ((x[t] - x_hat[t]) - e_hat).square().sum().item()
    assert aux_loss(sae, x, x_hat, pre, dead).item() == pytest.approx(want / 5, rel=1e-5)


def test_top_entries_is_exact_with_and_without_fallback():
    from saelab.sae.batchtopk import top_entries

    a = torch.rand(30, 50)
    for matrix in (
        a,
        torch.cat([a[:29], a[29:] + 10]),
    ):  # the second has one dominant row: fallback
        values, rows, cols = top_entries(RowTiles.of(matrix, tile_rows=7), 60, per_row=8)
        want = matrix.flatten().topk(60).values
        torch.testing.assert_close(values.sort().values, want.sort().values)
        torch.testing.assert_close(matrix[rows, cols], values)


@pytest.mark.parametrize("prefix, width", [(12, 12), (2, 24)])
def test_topafa_prefix_search_equals_full_sort(prefix, width, monkeypatch):
    from saelab.sae import topafa

    monkeypatch.setattr(topafa, "PREFIX", prefix)
    sae = randomize(make_sae("topafa", d_sae=24))
    with torch.no_grad():
        sae.b_dec.zero_()
    x = torch.randn(40, 16) * 0.2  # small targets: k* <= 3 for every row
    a = torch.relu(sae.pre_activation(x).detach())
    k_star, order = chosen_k(sae, a, x)
    assert order.shape[1] == width  # the prefix sufficed (12), or the full sort ran (2)
    norms = sae.W_dec.norm(dim=1).detach().numpy()
    for i in range(40):
        assert k_star[i].item() == _brute_force_k(
            a[i].numpy(), norms, (x[i] - sae.b_dec).norm().item()
        )


def test_relu_starts_with_a_small_encoder_and_every_other_rule_with_the_transpose():
    for arch in ARCHITECTURES:
        sae = make_sae(arch)
        scale = RELU_ENCODER_INIT_SCALE if arch in ("relu", "gated") else 1.0
        torch.testing.assert_close(sae.W_enc, sae.W_dec.T * scale)
    x = torch.randn(512, 16) * 4
    x_hat = make_sae("relu", d_sae=256)(x)  # x8: the full transpose would give ~4x the input
    assert 0.1 < (x_hat.norm(dim=1) / x.norm(dim=1)).median() < 1.0


def _brute_force_batch_topk(pre: torch.Tensor, count: int) -> set:
    """{(row, col)} of the `count` largest positive entries of pre, by a full sort."""
    order = sorted(
        ((v, i, j) for i, row in enumerate(pre.tolist()) for j, v in enumerate(row)), reverse=True
    )
    return {(i, j) for v, i, j in order[:count] if v > 0}


def _simulated_ranks(pre: torch.Tensor, k: int, n_ranks: int) -> set:
    """global_batch_topk on n_ranks slices of pre, with the gather done by hand."""
    from saelab.sae.batchtopk import global_batch_topk, local_offers

    parts = pre.chunk(n_ranks)
    offers = torch.cat([local_offers(RowTiles.of(p), len(p) * n_ranks * k, k)[0] for p in parts])
    chosen = set()
    for r, part in enumerate(parts):
        ranks = Collectives(data_ranks=n_ranks, gather=lambda values: offers)
        rows, cols, values = global_batch_topk(RowTiles.of(part, tile_rows=3), k, ranks)
        torch.testing.assert_close(part[rows, cols], values)
        chosen |= {(r * len(part) + i, j) for i, j in zip(rows.tolist(), cols.tolist())}
    return chosen


@pytest.mark.parametrize("n_ranks", range(1, 17))
def test_global_batch_topk_is_exact_for_any_world_size(n_ranks):
    gen = torch.Generator().manual_seed(n_ranks)
    k, rows_per_rank, h = 3, 4, 40
    pre = torch.randn(rows_per_rank * n_ranks, h, generator=gen)
    pre[0] += 8  # one row holds much of the budget (more than 4k of its entries)
    pre[-1] = -pre[-1].abs() - 0.1  # an all-negative row
    assert _simulated_ranks(pre, k, n_ranks) == _brute_force_batch_topk(pre, len(pre) * k)


@pytest.mark.parametrize(
    "bound, path", [(-100.0, "bound: raised"), (1.0, "bound"), (4.0, "per-row: too few")]
)
def test_global_batch_topk_first_cut_is_exact(bound, path, monkeypatch):
    """The cut at a bound from the running threshold gives the brute-force top n*k, when the
    bound keeps everything (and rises on the way), a few times n*k, or too few entries (then the
    per-row pool does)."""
    from saelab.sae import batchtopk

    gen = torch.Generator().manual_seed(0)
    pre = torch.randn(64, 96, generator=gen)
    pre[3] += 20  # one row holds all of its entries in the top
    pre[11] = -pre[11].abs() - 1  # all negative
    pre[20:30] = torch.round(pre[20:30] * 2) / 2  # ties
    k = 5
    pool = batchtopk.local_offers
    pooled = []
    monkeypatch.setattr(batchtopk, "local_offers", lambda *a: pooled.append(1) or pool(*a))
    rows, cols, values = batchtopk.global_batch_topk(
        RowTiles.of(pre, tile_rows=10), k, bound=torch.tensor(bound)
    )
    assert {(i, j) for i, j in zip(rows.tolist(), cols.tolist())} == _brute_force_batch_topk(
        pre, 64 * k
    )
    torch.testing.assert_close(pre[rows, cols], values)
    assert bool(pooled) == path.startswith("per-row")
    assert (rows.diff() >= 0).all()  # row-major


def test_batchtopk_training_mode_on_a_few_positive_entries_keeps_only_those():
    sae = make_sae("batchtopk", k=3, d_in=4, d_sae=6).train()
    pre = torch.full((5, 6), -1.0)
    pre[2, 1], pre[4, 5] = 2.0, 0.5
    from saelab.sae.batchtopk import global_batch_topk

    rows, cols, _ = global_batch_topk(RowTiles.of(pre), sae.cfg.k)
    assert list(zip(rows.tolist(), cols.tolist())) == [(2, 1), (4, 5)]


def test_topk_sparse_path_counts_only_positive_selections():
    sae = make_sae("topk", k=4)
    with torch.no_grad():  # pre-activations b_enc: two latents positive, the rest negative
        sae.W_enc.zero_()
        sae.b_enc.fill_(-1.0)
        sae.b_enc[[3, 7]] = 1.0
    out = sae.loss(torch.randn(10, 16), dead=torch.zeros(64, dtype=torch.bool))
    assert out.l0.item() == 2
    assert out.fired.nonzero().flatten().tolist() == [3, 7]
    dense = sae.loss(torch.randn(10, 16), dead=torch.zeros(64, dtype=torch.bool), sparse=False)
    assert dense.l0.item() == 2 and dense.fired.nonzero().flatten().tolist() == [3, 7]


def _reference_loss_terms(sae, x):
    """The authors' loss terms (SewoongLee/top-afa-sae training/sae.py, TopAFASAE), rewritten in
    numpy: l2 = mean over elements of (x_hat - x)^2, afa = c * mean_t (||f_t|| - t_t)^2, with x
    the preprocessed input (standardised per token when input_unit_norm) and t = ||x - b_dec||,
    the target of the selection (the reference's loss has ||x||: see sae/topafa.py)."""
    raw = x.double().numpy()
    if sae.cfg.input_scaling == "per_token":
        centred = raw - raw.mean(-1, keepdims=True)
        xs = centred / (centred.std(-1, ddof=1, keepdims=True) + 1e-5)
    else:
        xs = raw
    W_enc, b_enc = sae.W_enc.detach().double().numpy(), sae.b_enc.detach().double().numpy()
    W_dec, b_dec = sae.W_dec.detach().double().numpy(), sae.b_dec.detach().double().numpy()
    acts = np.maximum((xs - b_dec) @ W_enc + b_enc, 0)
    f = np.zeros_like(acts)
    for t in range(len(xs)):  # brute-force top-AFA selection per token
        k = _brute_force_k(acts[t], np.linalg.norm(W_dec, axis=1), np.linalg.norm(xs[t] - b_dec))
        top = np.argsort(-((acts[t] * np.linalg.norm(W_dec, axis=1)) ** 2), kind="stable")[:k]
        f[t, top] = acts[t, top]
    x_hat = f @ W_dec + b_dec
    l2 = ((x_hat - xs) ** 2).mean()
    afa = (
        sae.cfg.afa_coefficient
        * ((np.linalg.norm(f, axis=1) - np.linalg.norm(xs - b_dec, axis=1)) ** 2).mean()
    )
    return l2, afa


@pytest.mark.parametrize("scaling", ["none", "per_token"])
@pytest.mark.parametrize("sparse", [True, False])
def test_topafa_afa_term_has_the_reference_weight(scaling, sparse):
    """The ratio AFA term / reconstruction term equals the reference's for the same coefficient."""
    sae = randomize(
        make_sae("topafa", d_in=16, d_sae=48, afa_coefficient=1 / 32, input_scaling=scaling)
    )
    x = torch.randn(30, 16) * 2 + 0.5
    out = sae.loss(x, sparse=sparse)
    l2, afa = _reference_loss_terms(sae, x)
    assert out.terms["afa"].item() / out.terms["mse"].item() == pytest.approx(afa / l2, rel=1e-4)


def test_topafa_afa_term_targets_the_norm_the_selection_aims_at():
    """A code whose norm is ||x - b_dec|| pays no AFA term however far b_dec is from 0 (with the
    reference's ||x|| it would pay (||x - b_dec|| - ||x||)^2), and the term moves no b_dec."""
    sae = randomize(make_sae("topafa", d_in=16, d_sae=48, afa_coefficient=1 / 32))
    with torch.no_grad():
        sae.b_dec.fill_(3.0)
    x = torch.randn(5, 16)
    direction = torch.randn(5, 48).abs()
    f = (
        direction
        / direction.norm(dim=-1, keepdim=True)
        * (x - sae.b_dec).norm(dim=-1, keepdim=True)
    ).detach()
    term = sae.arch.penalty(sae, f.requires_grad_(), None, x)["afa"]
    assert term.item() == pytest.approx(0, abs=1e-8)
    mismatch = sae.arch.penalty(sae, f * 1.5, None, x)["afa"]
    expected = 16 / 32 * (0.5 * (x - 3.0).norm(dim=-1)).square().mean()
    assert mismatch.item() == pytest.approx(expected.item(), rel=1e-5)
    mismatch.backward()
    assert sae.b_dec.grad is None


def test_jumprelu_l0_coefficient_is_in_per_element_units():
    """||x - x_hat||^2 summed over d_in + d_in * lam * L0 is d_in times the reference's
    mean-over-elements error + lam * L0: the same trade-off for the same lam."""
    sae = randomize(make_sae("jumprelu", k=None, l0_coefficient=0.004))
    x = torch.randn(30, 16)
    out = sae.loss(x)
    f = sae.encode(x).detach()
    x_hat = (f @ sae.W_dec + sae.b_dec).detach()
    l2_reference = (x_hat - x).square().mean().item()
    l0_reference = 0.004 * (f != 0).sum(-1).float().mean().item()
    assert out.terms["l0"].item() / out.terms["mse"].item() == pytest.approx(
        l0_reference / l2_reference, rel=1e-5
    )


@pytest.mark.parametrize("seed", range(8))
def test_top_entries_is_exact_on_adversarial_inputs(seed):
    """A few rows holding most of the budget (one all of its row), ties, all-negative rows:
    the values equal a full sort's, every index points at its value, no entry twice."""
    from saelab.sae.batchtopk import top_entries

    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(64, 96, generator=gen)
    a[3] += 20  # holds every one of its entries in the top
    a[7, :40] += 10  # holds 40 > per_row
    a[11] = -a[11].abs() - 1  # all negative
    a[20:30] = torch.round(a[20:30])  # ties
    for count in (10, 64 * 4, 64 * 8 - 1):
        values, rows, cols = top_entries(RowTiles.of(a, tile_rows=10), count, per_row=8)
        want = a.flatten().topk(count).values
        torch.testing.assert_close(values.sort().values, want.sort().values)
        torch.testing.assert_close(a[rows, cols], values)
        assert len(set(zip(rows.tolist(), cols.tolist()))) == count
