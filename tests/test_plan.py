"""saelab plan: memory per rank, against the tensors the SAE and its trainer really hold."""

import pytest

from saelab import SAE, SAEConfig, cli
from saelab.errors import UsageError
from saelab.plan import memory_plan, parse_size
from saelab.sae.shard import LatentShard


@pytest.mark.parametrize("split", [1, 2, 4])
def test_parameters_are_those_of_the_shard_each_rank_holds(split):
    """A jumprelu shard holds W_enc, W_dec, b_enc, its thresholds and b_dec: plan's P."""
    d_in, d_sae = 24, 96
    width = d_sae // split
    shard = SAE(
        SAEConfig(arch="jumprelu", d_in=d_in, d_sae=d_sae, k=4),
        shard=LatentShard(0, width, 0, split),
    )
    held = sum(p.numel() for p in shard.parameters()) * 4
    plan = memory_plan(d_in, d_sae, batch_size=64, gpus=4, latent_parallel=split, k=4)
    assert plan.parameters == held
    assert plan.gradients == held and plan.adam == 2 * held
    assert plan.ddp_buckets == (held if split < 4 else 0)  # no data-parallel peer at 4 x 1


def test_a_split_trades_parameters_for_rows():
    """d_in 4096, 2^20 latents, 8 GPUs, batch 32768: DDP holds 2 * 4096 * 2^20 floats of
    weights per rank, a split of 8 one eighth; each rank then reads the whole batch."""
    ddp = memory_plan(4096, 2**20, 32768, 8, 1)
    eighth = memory_plan(4096, 2**20, 32768, 8, 8)
    assert ddp.parameters == 4 * (2 * 4096 * 2**20 + 2 * 2**20 + 4096)
    assert eighth.parameters == 4 * (2 * 4096 * 2**17 + 2 * 2**17 + 4096)
    assert eighth.batch == 8 * ddp.batch == 4 * 4 * 32768 * 4096
    assert ddp.total > 80 * 2**30 > eighth.total


def test_the_command_prints_every_split_and_what_fits(capsys):
    cli.main(
        ["plan", "--d-in", "4096", "--d-sae", "1048576", "--batch-size", "32768", "--gpus", "8",
         "--gpu-memory", "80GB"]
    )  # fmt: skip
    fits = {}
    for line in capsys.readouterr().out.splitlines()[2:]:
        cells = line.split()
        fits[" ".join(cells[: 1 if cells[0] == "DDP" else 5])] = cells[-1]
    assert fits == {
        "DDP": "no",
        "latent 2 x data 4": "no",
        "latent 4 x data 2": "yes",
        "latent 8 x data 1": "yes",
    }


def test_sizes_and_bad_plans():
    assert parse_size("80GB") == 80 * 2**30 and parse_size("1.5 TiB") == int(1.5 * 2**40)
    assert parse_size("512MB") == 512 * 2**20 and parse_size("1000") == 1000
    with pytest.raises(UsageError, match="cannot read '8x'"):
        parse_size("8x")
    with pytest.raises(UsageError, match="latent_parallel=3 does not divide --gpus 8"):
        memory_plan(16, 96, 64, 8, 3)
    with pytest.raises(UsageError, match="d_sae=100 must divide by 8"):
        memory_plan(16, 100, 64, 8, 8)
