"""Run under torchrun by test_latent_parallel.py: trains the cases of `cases()` with the
dictionary split over `latent_parallel` ranks and writes, on rank 0, each result's state and
history to OUT/<case>.pt. The test trains the same cases in one process and compares."""

import sys
from pathlib import Path

import torch

from saelab import SAE, SAEConfig, TrainConfig, train, train_many
from saelab.train.distributed import init_from_env, shutdown

D_IN, D_SAE, BATCH, STEPS = 8, 48, 24, 8


def data(seed: int = 0, rows: int = BATCH * STEPS) -> torch.Tensor:
    """Rows of unequal norms with a few directions that recur, so latents die and fire."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(6, D_IN, generator=g)
    weights = torch.relu(torch.randn(rows, 6, generator=g))
    return weights @ directions + 0.3 * torch.randn(rows, D_IN, generator=g) + 0.5


def cases() -> dict[str, tuple[SAEConfig, dict]]:
    """name -> (SAEConfig, TrainConfig fields beyond the common ones)."""
    common = dict(d_in=D_IN, d_sae=D_SAE)
    auxk = dict(aux_k=3, **common)  # fewer than the dead latents: a cut over shards
    return {
        "topk": (SAEConfig(arch="topk", k=4, **auxk), {}),
        "batchtopk": (SAEConfig(arch="batchtopk", k=4, **auxk), {}),
        "jumprelu": (SAEConfig(arch="jumprelu", k=6, **common), {"sparse": False}),
        "matryoshka": (
            SAEConfig(arch="matryoshka", k=4, matryoshka_widths=[6, 18, 48], **auxk),
            {},
        ),
        "relu": (SAEConfig(arch="relu", l1_coefficient=0.5, **common), {"grad_clip": 0.05}),
    }


def train_cfg(latent_parallel: int = 1, **fields) -> TrainConfig:
    """Few steps, a short dead window (so AuxK works from step 3), a held-out check."""
    base = dict(
        batch_size=BATCH,
        total_tokens=BATCH * STEPS,
        lr=1e-2,
        warmup_tokens=BATCH,
        dead_tokens=2 * BATCH,
        log_every=1,
        eval_every_tokens=4 * BATCH,
        progress=False,
        latent_parallel=latent_parallel,
    )
    return TrainConfig(**{**base, **fields})


def heldout() -> torch.Tensor:
    return data(seed=1, rows=40)


class Stop(Exception):
    """Ends a run after a given number of batches, as a crash would."""


def stopping_after(batches: list[torch.Tensor], n: int):
    yield from batches[:n]
    raise Stop


def main(out: Path, latent_parallel: int) -> None:
    init_from_env()
    me = torch.distributed.get_rank()
    x = data()
    for name, (sae_cfg, fields) in cases().items():
        sae = SAE(sae_cfg, seed=0)
        result = train(sae, x, train_cfg(latent_parallel, **fields), heldout=heldout())
        if me == 0:
            torch.save(
                {"state": result.sae.state_dict(), "history": result.history}, out / f"{name}.pt"
            )

    # several SAEs trained together on the same batches, as a sweep or a grid does
    together = train_many(
        [SAE(cases()[name][0], seed=0) for name in ("topk", "matryoshka")],
        x,
        [train_cfg(latent_parallel, eval_every_tokens=None)] * 2,
    )
    if me == 0:
        torch.save([r.sae.state_dict() for r in together], out / "together.pt")

    # an interrupted run resumed from its per-shard checkpoint (at step 4 of 8)
    batches = list(x.split(BATCH))
    sae_cfg, _ = cases()["batchtopk"]
    cfg = train_cfg(
        latent_parallel,
        checkpoint_every_tokens=4 * BATCH,
        eval_every_tokens=None,
        out_dir=str(out / "run"),
    )
    try:
        train(SAE(sae_cfg, seed=0), stopping_after(batches, 6), cfg)
    except Stop:
        pass
    result = train(SAE(sae_cfg, seed=0), batches, TrainConfig(**{**cfg.to_dict(), "resume": True}))
    if me == 0:
        torch.save(
            {"state": result.sae.state_dict(), "history": result.history}, out / "resumed.pt"
        )

    # the whole SAE saved by the split run, loaded and trained on by a split run again
    torch.distributed.barrier()
    loaded = SAE.load(out / "run")
    more = train_cfg(latent_parallel, total_tokens=4 * BATCH, eval_every_tokens=None)
    result = train(loaded, data(seed=2), more)
    if me == 0:
        torch.save(
            {"state": result.sae.state_dict(), "history": result.history}, out / "continued.pt"
        )
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
