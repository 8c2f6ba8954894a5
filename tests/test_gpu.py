"""On a CUDA GPU (skipped without one; bench/gpu_check.sh runs them where one is lent): every
architecture's sparse training path against its dense reference path, training steps on the GPU
against the same steps on the CPU, and bfloat16 autocast keeping float32 weights and
thresholds."""

import copy

import pytest
import torch
from conftest import make_sae, randomize

from saelab import TrainConfig
from saelab.sae.registry import ARCHITECTURES
from saelab.train.loop import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs these)"
    ),
]


@pytest.fixture(autouse=True)
def exact_matmuls():
    """float32 products in float32 (no TF32), so GPU and CPU agree to float rounding."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_sparse_and_dense_paths_agree_on_cuda(arch):
    dense = randomize(make_sae(arch, d_in=64, d_sae=1024, k=8, aux_k=16)).train().cuda()
    sparse = copy.deepcopy(dense)
    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(0)).cuda() * 2
    dead = torch.zeros(1024, dtype=torch.bool, device="cuda")
    dead[::3] = True
    out_d = dense.loss(x, dead, sparse=False)
    out_s = sparse.loss(x, dead, sparse=True)
    for name in out_d.terms:
        torch.testing.assert_close(
            out_s.terms[name], out_d.terms[name], rtol=1e-4, atol=1e-4, msg=name
        )
    torch.testing.assert_close(out_s.l0.float().cpu(), out_d.l0.float().cpu())
    out_d.loss.backward()
    out_s.loss.backward()
    for (name, p_d), p_s in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(p_s.grad, p_d.grad, rtol=1e-3, atol=1e-4, msg=name)


def _trained(arch: str, device: str, bf16: bool = False, steps: int = 4) -> Trainer:
    sae = make_sae(arch, d_in=64, d_sae=1024, k=8, aux_k=16).to(device)
    cfg = TrainConfig(batch_size=256, lr=1e-3, warmup_tokens=256, dead_tokens=512, bf16=bf16)
    trainer = Trainer(sae, cfg, total_steps=100)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        trainer.train_step((torch.randn(256, 64, generator=g) * 3 + 1).to(device))
    return trainer


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_cuda_steps_equal_cpu_steps(arch):
    cpu, gpu = _trained(arch, "cpu").sae, _trained(arch, "cuda").sae
    for name, t in cpu.state_dict().items():
        torch.testing.assert_close(
            gpu.state_dict()[name].cpu(), t, rtol=1e-3, atol=1e-4, msg=name, equal_nan=True
        )


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu", "topk"])
def test_bf16_autocast_keeps_float32_weights_and_thresholds(arch):
    """The encoder product in bfloat16, everything kept in float32; after 8 steps the
    reconstruction error is within 5% of the float32 run's."""
    half, full = _trained(arch, "cuda", bf16=True, steps=8).sae, _trained(arch, "cuda", steps=8).sae
    for name, t in half.state_dict().items():
        assert not t.is_floating_point() or t.dtype == torch.float32, name
    x = (torch.randn(512, 64, generator=torch.Generator().manual_seed(9)) * 3 + 1).cuda()
    with torch.no_grad():
        errors = [sae.loss(x).terms["mse"].item() for sae in (half, full)]
    assert errors[0] == pytest.approx(errors[1], rel=0.05)


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_dense_steps_between_records_never_synchronise(arch):
    """CUDA's sync debug mode raises on any host synchronisation inside the steps."""
    sae = make_sae(arch, d_in=64, d_sae=1024, k=8).cuda()
    trainer = Trainer(sae, TrainConfig(batch_size=256, log_every=100), total_steps=1000)
    x = torch.randn(256, 64, device="cuda")
    trainer.train_step(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            trainer.train_step(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_training_from_host_batches_equals_the_cpu_run():
    """train() on CUDA from batches in host memory (copied through pinned memory)."""
    from saelab import train

    x = torch.randn(2048, 64, generator=torch.Generator().manual_seed(4)) * 2
    cfg = TrainConfig(batch_size=256, lr=1e-3, warmup_tokens=256, progress=False)
    on_gpu = train(make_sae("batchtopk", d_in=64, d_sae=512, k=8).cuda(), x, cfg).sae
    on_cpu = train(make_sae("batchtopk", d_in=64, d_sae=512, k=8), x, cfg).sae
    for name, t in on_cpu.state_dict().items():
        torch.testing.assert_close(on_gpu.state_dict()[name].cpu(), t, rtol=1e-3, atol=1e-4)
