"""Class 7 of the hostile pass: the Python API checks its arguments and says what it expected
(ArgumentError, a TypeError, for a wrong type; ConfigError or DataError for a wrong value),
never a raw AttributeError or torch message. A dict is accepted for SAEConfig and TrainConfig."""

import pytest
import torch

from saelab import (
    SAE,
    DataConfig,
    SAEConfig,
    TrainConfig,
    afa_stats,
    evaluate,
    harvest,
    load_model,
    train,
    train_many,
)
from saelab.errors import ArgumentError, ConfigError, DataError, SaelabError

CFG = SAEConfig(arch="topk", d_in=16, d_sae=32, k=4)
X = torch.randn(600, 16)
FAST = TrainConfig(batch_size=64, total_tokens=128, progress=False)


def sae():
    return SAE(CFG, seed=0)


CASES = [
    ("SAE of a string", lambda: SAE("topk"), ArgumentError, "cfg must be an SAEConfig or a dict of its fields, got str"),
    ("SAE of a list", lambda: SAE([16, 32]), ArgumentError, "cfg must be an SAEConfig"),
    ("SAE of an incomplete dict", lambda: SAE({"arch": "topk", "d_in": 16}), ConfigError, "d_sae"),
    ("seed a string", lambda: SAE(CFG, seed="a"), ArgumentError, "seed must be an integer or None, got str"),
    ("seed a float", lambda: SAE(CFG, seed=1.5), ArgumentError, "seed must be an integer or None, got float"),
    ("seed a bool", lambda: SAE(CFG, seed=True), ArgumentError, "seed must be an integer or None, got bool"),
    ("train a string", lambda: train("sae", X, FAST), ArgumentError, "must be a saelab.SAE, got str"),
    ("train with a string config", lambda: train(sae(), X, "fast"), ArgumentError, "TrainConfig or a dict of its fields, got str"),
    ("train with an unknown config key", lambda: train(sae(), X, {"batch": 64}), ConfigError, "unknown TrainConfig field\\(s\\): batch"),
    ("train on an int", lambda: train(sae(), 5, FAST), DataError, "cannot read activations from int"),
    ("train on no rows", lambda: train(sae(), torch.zeros(0, 16), FAST), DataError, "empty data set"),
    ("train on zero rows", lambda: train(sae(), torch.zeros(600, 16), FAST), DataError, "64 of 64 activation rows are all zeros"),
    ("train on the wrong width", lambda: train(sae(), torch.randn(600, 8), FAST), DataError, "d_in=8, but the SAE has d_in=16"),
    ("train_many of one SAE", lambda: train_many(sae(), X, [FAST]), ArgumentError, "saes must be a list of SAEs, got SAE"),
    ("train_many of one config", lambda: train_many([sae()], X, FAST), ArgumentError, "cfgs must be a list of TrainConfigs"),
    ("evaluate a string", lambda: evaluate("sae", X), ArgumentError, "sae must be a saelab.SAE, got str"),
    ("afa_stats of a string", lambda: afa_stats("sae", X), ArgumentError, "sae must be a saelab.SAE"),
    ("afa_stats of a list", lambda: afa_stats(sae(), [[0.0] * 16]), DataError, "floating-point tensor"),
    ("load a number", lambda: SAE.load(5), ArgumentError, "path must be a directory path, got int"),
    ("load_any a number", lambda: SAE.load_any(5), ArgumentError, "path must be a directory path"),
    ("encode a list", lambda: sae().encode([1.0] * 16), DataError, "floating-point tensor \\[..., d_in\\], got list"),
    ("encode integers", lambda: sae().encode(torch.ones(3, 16, dtype=torch.long)), DataError, "got torch.int64"),
    ("decode the wrong width", lambda: sae().decode(torch.zeros(3, 8)), DataError, "codes must be a tensor \\[..., d_sae=32\\], got \\(3, 8\\)"),
    ("decode per token without stats", lambda: SAE(CFG.replace(input_scaling="per_token")).decode(torch.zeros(3, 32)), ArgumentError, "needs the input's statistics"),
    ("SAEConfig a string width", lambda: SAEConfig(arch="topk", d_in="16", d_sae=32), ConfigError, "d_in must be a positive integer, got '16'"),
    ("SAEConfig of an unknown setting", lambda: SAEConfig(arch="topk", d_in=16, d_sae=32, kk=2), ConfigError, "kk do\\(es\\) not apply"),
    ("TrainConfig a string batch", lambda: TrainConfig(batch_size="64"), ConfigError, "batch_size must be a positive integer, got '64'"),
    ("TrainConfig an implausible lr", lambda: TrainConfig(lr=2e3), ConfigError, "implausibly large"),
    ("DataConfig a string layer", lambda: DataConfig(layer="3"), ConfigError, "layer must be a non-negative integer"),
    ("harvest with a string model", lambda: harvest("gpt2", torch.zeros(1, 4, dtype=torch.long), 0), ArgumentError, "model must be a LanguageModel"),
    ("load_model of a number", lambda: load_model(5), ArgumentError, "spec must be a model name"),
]  # fmt: skip


@pytest.mark.parametrize("name, call, error, pattern", CASES, ids=[c[0] for c in CASES])
def test_api_misuse_says_what_was_expected(name, call, error, pattern):
    with pytest.raises(error, match=pattern) as caught:
        call()
    assert isinstance(caught.value, SaelabError)


def test_a_dict_is_a_config():
    model = SAE({"arch": "topk", "d_in": 16, "d_sae": 32, "k": 4}, seed=0)
    assert model.cfg == CFG
    result = train(model, X, {"batch_size": 64, "total_tokens": 128, "progress": False})
    assert result.steps == 2


def test_every_class_has_eight_cases():
    assert len(CASES) >= 8
