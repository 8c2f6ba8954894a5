"""The sparse training path equals the dense reference path: losses and every gradient; the
trainer takes the dense path while the code is dense."""

import copy

import pytest
import torch
from conftest import make_sae, randomize

from saelab import SAE, SAEConfig, TrainConfig
from saelab.sae import sparse as sparse_module
from saelab.sae.batchtopk import smallest_active
from saelab.sae.registry import ARCHITECTURES
from saelab.sae.sparse import SparseCode, decode, select
from saelab.train.loop import Trainer


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("input_scaling", ["none", "per_token"])
@pytest.mark.parametrize("tile_rows", [None, 7])
def test_sparse_and_dense_paths_agree(arch, input_scaling, tile_rows, monkeypatch):
    """With one tile, and with the pre-activation made in tiles of 7 rows (the last one short)."""
    if tile_rows:
        monkeypatch.setattr(sparse_module, "TILE_ENTRIES", 64 * tile_rows)
        shapes = []
        iterate = sparse_module.RowTiles.__iter__
        monkeypatch.setattr(
            sparse_module.RowTiles,
            "__iter__",
            lambda tiles: (
                shapes.append(tile.shape) or (rows, tile) for rows, tile in iterate(tiles)
            ),
        )
    dense = randomize(make_sae(arch, k=5, aux_k=7, input_scaling=input_scaling)).train()
    sparse = copy.deepcopy(dense)
    x = torch.randn(50, 16) * 2
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True  # AuxK over a third of the latents
    out_d = dense.loss(x, dead, sparse=False)
    out_s = sparse.loss(x, dead, sparse=True)
    assert out_d.terms.keys() == out_s.terms.keys()
    for name in out_d.terms:
        torch.testing.assert_close(
            out_s.terms[name], out_d.terms[name], rtol=1e-5, atol=1e-5, msg=name
        )
    torch.testing.assert_close(out_s.fired, out_d.fired)
    torch.testing.assert_close(out_s.l0.float(), out_d.l0.float())
    out_d.loss.backward()
    out_s.loss.backward()
    for (name, p_d), p_s in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(p_s.grad, p_d.grad, rtol=1e-4, atol=1e-5, msg=name)
    if arch == "batchtopk":  # the value the threshold update takes
        torch.testing.assert_close(smallest_active(out_s.code), smallest_active(out_d.code))
    if tile_rows and dense.arch.select is not None:
        assert (
            shapes
            and max(rows for rows, _ in shapes) == 7
            and sum(rows for rows, _ in shapes) % 50 == 0
        )


def test_sparse_code_decode_matches_dense_matmul():
    rows = torch.tensor([0, 0, 2, 3, 3, 3])
    cols = torch.tensor([1, 4, 0, 2, 3, 4])
    values = torch.rand(6)
    code = SparseCode(rows, cols, values, n=5)
    W = torch.randn(6, 3)
    dense = torch.zeros(5, 6).index_put((rows, cols), values)
    torch.testing.assert_close(decode(code, W), dense @ W)
    torch.testing.assert_close(code.row_norms(), dense.norm(dim=1))


def test_selected_pre_backward_touches_only_the_selection():
    """Gradients into x, b_dec, W_enc and b_enc equal autograd through the dense expression;
    b_dec's is -W_enc @ grad_b_enc, with no per-row product when x needs no gradient."""
    for x_needs_grad in (True, False):
        x = torch.randn(4, 3, requires_grad=x_needs_grad)
        b_dec = torch.randn(3, requires_grad=True)
        W = torch.randn(3, 5, requires_grad=True)
        b = torch.randn(5, requires_grad=True)
        pre = ((x - b_dec) @ W + b).detach()
        rows, cols = torch.tensor([0, 1, 1, 3]), torch.tensor([2, 0, 4, 2])
        leaves = (x, b_dec, W, b) if x_needs_grad else (b_dec, W, b)
        select(rows, cols, pre[rows, cols], x, b_dec, W, b).values.sum().backward()
        reference = [t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        mask = torch.zeros(4, 5)
        mask[rows, cols] = 1
        (torch.relu((x - b_dec) @ W + b) * mask).sum().backward()
        for got, t in zip(reference, leaves):
            torch.testing.assert_close(got, t.grad)
        assert (W.grad[:, [1, 3]] == 0).all()  # latents 1 and 3 were never selected


def test_encoder_weight_and_its_sparse_gradient_are_contiguous():
    """W_enc is stored contiguous and the sparse path's gradient arrives in that layout, so
    neither autograd nor fused Adam copies it every step."""
    sae = randomize(make_sae("topk", k=5))
    assert sae.W_enc.is_contiguous()
    sae.loss(torch.randn(50, 16)).loss.backward()
    assert sae.W_enc.grad.is_contiguous() and sae.W_enc.grad.stride() == sae.W_enc.stride()


@pytest.mark.parametrize(
    "k, sparse, paths",
    [(2, True, [True] * 4), (16, True, [True, True, False, False]), (2, False, [False] * 4)],
)
def test_trainer_steps_through_the_dense_path_while_the_code_is_dense(
    k, sparse, paths, monkeypatch
):
    """d_sae 64: at most 64/16 = 4 latents per token keep the sparse path; after a record with
    L0 16 the next steps go dense, L0 2 stays sparse, and sparse=False is always dense."""
    used = []
    loss = SAE.loss
    monkeypatch.setattr(
        SAE, "loss", lambda self, *a, **kw: used.append(kw["sparse"]) or loss(self, *a, **kw)
    )
    sae = SAE(SAEConfig(arch="topk", d_in=8, d_sae=64, k=k), seed=0)
    cfg = TrainConfig(batch_size=32, log_every=2, progress=False, sparse=sparse)
    trainer = Trainer(sae, cfg, total_steps=4)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    for _ in range(4):
        trainer.train_step(x)
    assert [r["l0"] for r in trainer.history] == [k, k]
    assert used == paths
