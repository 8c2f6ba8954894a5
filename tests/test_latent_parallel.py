"""A dictionary split over ranks (latent parallelism): the pieces against one process, then
torchrun with gloo CPU processes (2 and 3 latent ranks, a 2 x 2 data x latent mesh) against one
process with the same global batch and seed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from latent_parallel_worker import BATCH, cases, data, heldout, train_cfg

from saelab import SAE, SAEConfig, train
from saelab.errors import ArgumentError, ConfigError
from saelab.sae.shard import (
    LatentShard,
    draw_rows,
    latent_slices,
    row_cut,
    take_shard,
    top_k_per_row,
)
from saelab.sae.sparse import RowTiles
from saelab.train.checkpoint import CheckpointError, load_checkpoint
from saelab.train.distributed import mesh

WORKER = Path(__file__).with_name("latent_parallel_worker.py")


@pytest.mark.parametrize("rows, width", [(1000, 63), (37, 5), (4609, 577), (7, 48), (3, 1)])
def test_rows_drawn_in_blocks_are_one_draw(rows, width):
    whole = torch.randn(rows, width, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    part = draw_rows(g, rows, width, slice(rows // 3, rows // 2 + 1))
    assert torch.equal(part, whole[rows // 3 : rows // 2 + 1])
    # the generator ends where one draw leaves it
    assert torch.equal(
        torch.rand(4, generator=g),
        torch.rand(4, generator=torch.Generator().manual_seed(3).set_state(_after(rows, width))),
    )


def _after(rows, width):
    g = torch.Generator().manual_seed(3)
    torch.randn(rows, width, generator=g)
    return g.get_state()


@pytest.mark.parametrize("transcoder", [False, True])
def test_a_shard_starts_as_the_whole_sae_cut(transcoder):
    cfg = SAEConfig(arch="jumprelu", d_in=8, d_sae=48, k=4, d_out=6 if transcoder else None)
    whole = SAE(cfg, seed=5)
    start, stop = latent_slices(48, 3)[1]
    shard = SAE(cfg, seed=5, shard=LatentShard(start, stop, 1, 3))
    torch.testing.assert_close(shard.W_enc, whole.W_enc[:, start:stop], rtol=0, atol=0)
    torch.testing.assert_close(shard.W_dec, whole.W_dec[start:stop], rtol=0, atol=0)
    assert shard.log_threshold.shape == (16,) and shard.b_enc.shape == (16,)
    cut = SAE(cfg, seed=5)
    take_shard(cut, LatentShard(start, stop, 1, 3))
    for name, t in shard.state_dict().items():
        assert torch.equal(t, cut.state_dict()[name]), name


def _three_shards(pre: torch.Tensor):
    """LatentShards of a [n, 48] matrix's three column blocks whose gather returns what each
    shard would offer (its own top-k per row) in shard order."""
    blocks = pre.split(16, dim=1)

    def offers(k):
        tops = [b.topk(min(k, 16), dim=1, sorted=False).values for b in blocks]
        return torch.cat(
            [torch.cat([t, t.new_full((len(t), k - t.shape[1]), -torch.inf)], 1) for t in tops]
        )

    def shard(i, k):
        return LatentShard(16 * i, 16 * (i + 1), i, 3, gather=lambda values: offers(k))

    return blocks, shard


@pytest.mark.parametrize("k", [1, 5, 16, 20])
def test_each_rows_top_k_over_shards_is_the_whole_dictionarys(k):
    pre = torch.randn(30, 48, generator=torch.Generator().manual_seed(k))
    pre[3] = -1.0 - torch.rand(48)  # a row without a positive entry
    blocks, shard = _three_shards(pre)
    picked = set()
    for i, block in enumerate(blocks):
        rows, cols, values = top_k_per_row(RowTiles.of(block, tile_rows=7), k, shard(i, k))
        assert torch.equal(values, block[rows, cols])
        picked |= {(r, c + 16 * i) for r, c in zip(rows.tolist(), cols.tolist())}
    values, cols = pre.topk(k, dim=1)
    assert picked == {
        (r, c) for r in range(30) for c, v in zip(cols[r].tolist(), values[r]) if v > 0
    }
    whole = top_k_per_row(RowTiles.of(pre, tile_rows=7), k, LatentShard(0, 48))
    assert set(zip(whole[0].tolist(), whole[1].tolist())) == picked
    cut = row_cut(blocks[0].topk(min(k, 16), dim=1).values, k, shard(0, k))
    torch.testing.assert_close(cut, pre.topk(k, dim=1).values[:, -1])


def test_bad_splits_are_refused_before_training():
    with pytest.raises(ConfigError, match="not divisible by latent_parallel=5"):
        latent_slices(48, 5)
    with pytest.raises(ConfigError, match="does not divide the 1 processes"):
        mesh(2)
    with pytest.raises(ConfigError, match="topafa SAEs cannot be split over ranks"):
        SAE(SAEConfig(arch="topafa", d_in=8, d_sae=48), shard=LatentShard(0, 24, 0, 2))
    with pytest.raises(ConfigError, match="latent_parallel=2 does not divide"):
        train(SAE(cases()["topk"][0]), data(), train_cfg(2))
    part = SAE(cases()["topk"][0], shard=LatentShard(0, 24, 0, 2))
    with pytest.raises(ArgumentError, match="shard 0 of 2 .* load the finished SAE whole"):
        part.encode(data()[:4])


def _compare(got: dict, want, history_too: bool = True) -> None:
    for name, t in want.sae.state_dict().items():
        torch.testing.assert_close(got["state"][name], t, rtol=1e-4, atol=1e-5, msg=name)
    if history_too:
        assert len(got["history"]) == len(want.history)
        for mine, theirs in zip(got["history"], want.history):
            assert mine.keys() == theirs.keys()
            for key, value in theirs.items():
                assert mine[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("processes, latent_parallel", [(2, 2), (3, 3), (4, 2)])
def test_a_split_dictionary_trains_as_one_process(tmp_path, processes, latent_parallel):
    """Every architecture that can be split, AuxK on (a short dead window), a held-out check;
    two SAEs trained together (as a grid); a run stopped after its checkpoint and resumed; the
    saved SAE loaded whole and trained on by a split run again."""
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            str(processes),
            str(WORKER),
            str(tmp_path),
            str(latent_parallel),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    x = data()
    for name, (sae_cfg, fields) in cases().items():
        single = train(SAE(sae_cfg, seed=0), x, train_cfg(**fields), heldout=heldout())
        assert any(r.get("aux", 0) > 0 for r in single.history) or "aux" not in single.history[0]
        _compare(torch.load(tmp_path / f"{name}.pt"), single)

    together = torch.load(tmp_path / "together.pt")
    for name, state in zip(("topk", "matryoshka"), together):
        alone = train(SAE(cases()[name][0], seed=0), x, train_cfg(eval_every_tokens=None))
        for key, t in alone.sae.state_dict().items():
            torch.testing.assert_close(state[key], t, rtol=1e-4, atol=1e-5, msg=key)

    sae_cfg, _ = cases()["batchtopk"]
    whole = train(SAE(sae_cfg, seed=0), list(x.split(BATCH)), train_cfg(eval_every_tokens=None))
    _compare(torch.load(tmp_path / "resumed.pt"), whole)
    saved = SAE.load(tmp_path / "run")  # the whole SAE, one file, loaded in one process
    torch.testing.assert_close(saved.encode(x), whole.sae.encode(x), rtol=1e-4, atol=1e-5)
    assert not list(tmp_path.glob("run/checkpoint*"))
    more = train(saved, data(seed=2), train_cfg(total_tokens=4 * BATCH, eval_every_tokens=None))
    _compare(torch.load(tmp_path / "continued.pt"), more)


def test_a_run_resumes_only_on_its_own_split(tmp_path):
    """A split run's index refuses a whole resume, and a whole checkpoint a split one, each
    naming the setting to use."""
    index = {"step": 4, "shards": ["checkpoint.shard-0-of-2.step-4.pt", "b"]}
    torch.save(index, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="split over 2 ranks; resume with latent_parallel=2"):
        load_checkpoint(tmp_path)
    torch.save({"step": 4}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="holds a whole dictionary; resume with latent_par"):
        load_checkpoint(tmp_path, shard_state=lambda index: index)


def test_weights_too_large_for_one_file_are_split_with_an_index(tmp_path, monkeypatch):
    """Split as transformers splits a checkpoint; read back by saelab and by huggingface_hub's
    own loader; saving small again leaves one file."""
    from huggingface_hub import load_torch_model

    from saelab.io import format as sae_format

    sae = SAE(SAEConfig(arch="topk", d_in=8, d_sae=48, k=4, input_scaling="none"), seed=0)
    monkeypatch.setattr(sae_format, "MAX_FILE_BYTES", 1000)
    sae.save(tmp_path)
    assert not (tmp_path / "sae.safetensors").exists()
    assert len(list(tmp_path.glob("sae-0000*-of-0000*.safetensors"))) > 1
    loaded = SAE.load(tmp_path)
    for name, t in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    theirs = SAE(sae.cfg)
    keys = load_torch_model(theirs, tmp_path, filename_pattern="sae{suffix}.safetensors")
    assert keys.missing_keys == ["input_scale"] and not keys.unexpected_keys  # it is in cfg.json
    assert torch.equal(theirs.W_enc, sae.W_enc) and torch.equal(theirs.W_dec, sae.W_dec)
    monkeypatch.undo()
    sae.save(tmp_path)
    assert (tmp_path / "sae.safetensors").is_file()
    assert not (tmp_path / "sae.safetensors.index.json").exists()


def test_a_top_k_split_refuses_the_dense_path_and_a_torn_checkpoint(tmp_path):
    """The dense reference path selects within one shard: refused before any step. An index
    whose shard file holds another step (a run stopped between the two writes) is refused."""
    from saelab.train.distributed import Mesh
    from saelab.train.latent_parallel import load_sharded, shard_file
    from saelab.train.loop import Trainer

    split = Mesh(latent_ranks=2)
    with pytest.raises(ConfigError, match="trains through the sparse path: drop sparse=False"):
        Trainer(SAE(cases()["topk"][0]), train_cfg(2, sparse=False), 8, grid=split)
    part = SAE(cases()["topk"][0], shard=LatentShard(0, 24, 0, 2))
    names = [shard_file(4, i, 2) for i in range(2)]
    torch.save({"step": 4, "shards": names}, tmp_path / "checkpoint.pt")
    torch.save({"step": 3}, tmp_path / names[0])
    with pytest.raises(CheckpointError, match="holds step 3, the index step 4"):
        load_checkpoint(tmp_path, shard_state=lambda index: load_sharded(tmp_path, index, part))
