import pytest
import torch

from saelab import SAE, SAEConfig, TrainConfig
from saelab.config import ConfigError


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "topk", "k": 65}, "k=65 is larger than d_sae=64"),
        ({"arch": "topk", "k": 0}, "k must be a positive integer"),
        ({"arch": "batchtopk", "k": -3}, "k must be a positive integer"),
        ({"arch": "topk"}, "needs k"),
        ({"arch": "ladder"}, "unknown arch 'ladder'"),
        ({"arch": "jumprelu"}, "exactly one of k"),
        ({"arch": "jumprelu", "k": 4, "l0_coefficient": 1.0}, "exactly one of k"),
        (
            {"arch": "jumprelu", "k": 4, "jumprelu_threshold_rate": -1},
            "jumprelu_threshold_rate must be a finite number >= 0",
        ),
        (
            {"arch": "jumprelu", "k": 4, "jumprelu_target_rate": float("nan")},
            "jumprelu_target_rate must be a finite",
        ),
        ({"arch": "relu", "input_scaling": "layer"}, "unknown input_scaling"),
    ],
)
def test_bad_sae_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SAEConfig(d_in=16, d_sae=64, **kwargs)


def test_round_trip_and_unknown_fields():
    cfg = SAEConfig(arch="topk", d_in=4, d_sae=8, k=2)
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown SAEConfig field"):
        SAEConfig.from_dict({**cfg.to_dict(), "kk": 1})
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_wrong_d_in_is_named():
    sae = SAE(SAEConfig(arch="topk", d_in=16, d_sae=64, k=4))
    with pytest.raises(ValueError, match="last dimension 15 .* d_in=16"):
        sae.encode(torch.randn(3, 15))


def test_bad_train_config():
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="checkpoints need out_dir"):
        TrainConfig(checkpoint_every_tokens=100)
