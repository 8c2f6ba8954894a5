"""The activation cache on a tiny model: write, read back, resume, extend, reject bad shards."""

import json
from dataclasses import replace

import pytest
import torch
from tiny_models import tiny_lm

from saelab import SAE, SAEConfig, TrainConfig, train
from saelab.data import harvesting
from saelab.data.cache import ActivationCache, CacheError, CacheSpec, build_cache, build_caches
from saelab.data.hooks import HookPoint, harvest, harvest_many


@pytest.fixture(scope="module")
def lm():
    return tiny_lm("llama")


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"text": " ".join(f"w{(i * 7 + j) % 100}" for j in range(30))})
            for i in range(200)
        )
    )
    return str(path)


def _spec(text, **kw):
    return CacheSpec(
        model="tiny", layer=1, site="resid_post", dataset=text, ctx_len=8, dtype="float32", **kw
    )


def _all(cache):
    shards = [cache.load_shard(i) for i in range(len(cache.shards))]
    return {k: torch.cat([s[k] for s in shards]) for k in ("activations", "context", "position")}


def test_cache_rows_are_the_model_activations_without_special_tokens(lm, text, tmp_path):
    cache = build_cache(
        lm,
        tmp_path / "c",
        _spec(text),
        tokens=300,
        shard_tokens=100,
        batch_contexts=4,
        progress=False,
    )
    assert cache.n_tokens >= 300 and len(cache.shards) >= 3
    rows = _all(cache)
    first = cache.load_shard(0)
    ids = first["tokens"].long()
    acts = harvest(lm, ids, 1, "resid_post")
    for r in range(30):
        c, p = int(rows["context"][r]), int(rows["position"][r])
        torch.testing.assert_close(rows["activations"][r], acts[c, p])
        assert p != 0 and int(ids[c, p]) not in (0, 1, 2)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert (
        manifest["spec"]["layer"] == 1
        and manifest["d_in"] == 32
        and manifest["n_tokens"] == cache.n_tokens
    )
    assert all(len(s["sha256"]) == 64 for s in manifest["shards"])


def test_shuffled_batches_cover_everything_and_resume_exactly(lm, text, tmp_path):
    cache = build_cache(
        lm, tmp_path / "c", _spec(text), tokens=400, shard_tokens=50, progress=False
    )
    n, b = cache.n_tokens, 64
    stream = cache.batches(batch_size=b, seed=5)
    shuffled = torch.cat([next(stream) for _ in range(n // b + 2)])
    in_order = torch.cat(list(cache.chunks(b)))
    assert len(in_order) == n and not torch.equal(shuffled[:n], in_order)
    rows = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert rows(shuffled[:n]) == rows(in_order)  # one epoch holds every row exactly once
    later = cache.batches(batch_size=b, seed=5, skip_tokens=3 * b)
    torch.testing.assert_close(next(later), shuffled[3 * b : 4 * b])
    assert not torch.equal(next(cache.batches(b, seed=6)), shuffled[:b])


class Interrupt(Exception):
    pass


def test_resume_after_interruption_mid_shard(lm, text, tmp_path, monkeypatch):
    whole = _all(
        build_cache(
            lm,
            tmp_path / "whole",
            _spec(text),
            tokens=500,
            shard_tokens=120,
            batch_contexts=4,
            progress=False,
        )
    )
    calls = []

    def flaky(*args, **kw):
        calls.append(1)
        if len(calls) == 9:  # after two shards of 120 tokens, partway into the third
            raise Interrupt
        return harvest_many(*args, **kw)

    monkeypatch.setattr(harvesting, "harvest_many", flaky)
    with pytest.raises(Interrupt):
        build_cache(
            lm,
            tmp_path / "cut",
            _spec(text),
            tokens=500,
            shard_tokens=120,
            batch_contexts=4,
            progress=False,
        )
    monkeypatch.setattr(harvesting, "harvest_many", harvest_many)
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["n_tokens"] > 0
    resumed = _all(
        build_cache(
            lm,
            tmp_path / "cut",
            _spec(text),
            tokens=500,
            shard_tokens=120,
            batch_contexts=4,
            progress=False,
        )
    )
    for key in whole:
        assert torch.equal(resumed[key], whole[key]), key


def test_extend_appends_new_contexts(lm, text, tmp_path):
    small = build_cache(
        lm, tmp_path / "c", _spec(text), tokens=100, shard_tokens=60, progress=False
    )
    n_small = small.n_tokens
    big = build_cache(lm, tmp_path / "c", _spec(text), tokens=400, shard_tokens=60, progress=False)
    assert big.n_tokens >= 400
    contexts = _all(big)["context"]
    assert torch.all(contexts[1:] >= contexts[:-1])  # no context harvested twice
    assert torch.equal(_all(big)["activations"][:n_small], _all(small)["activations"])


def test_mismatched_request_and_bad_shards(lm, text, tmp_path):
    build_cache(lm, tmp_path / "c", _spec(text), tokens=200, shard_tokens=60, progress=False)
    with pytest.raises(CacheError, match="layer: cache has 1, requested 2"):
        build_cache(
            lm,
            tmp_path / "c",
            CacheSpec(
                model="tiny", layer=2, site="resid_post", dataset=text, ctx_len=8, dtype="float32"
            ),
            tokens=10,
        )
    with pytest.raises(CacheError, match="site: cache has 'resid_post', requested 'mlp_out'"):
        ActivationCache(
            tmp_path / "c",
            expect=_spec(text).__class__(**{**_spec(text).__dict__, "site": "mlp_out"}),
        )
    shard = tmp_path / "c" / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-64])
    cache = ActivationCache(tmp_path / "c")
    with pytest.raises(CacheError, match="checksum"):
        cache.load_shard(1)
    with pytest.raises(CacheError, match="checksum"):
        list(cache.chunks(1000))
    shard.unlink()
    with pytest.raises(CacheError, match="shard-00001.safetensors is missing"):
        ActivationCache(tmp_path / "c")
    with pytest.raises(CacheError, match="not an activation cache"):
        ActivationCache(tmp_path)


def test_train_reads_a_cache_directory(lm, text, tmp_path):
    build_cache(lm, tmp_path / "c", _spec(text), tokens=600, shard_tokens=100, progress=False)
    sae = SAE(SAEConfig(arch="topk", d_in=32, d_sae=64, k=4), seed=0)
    result = train(
        sae, str(tmp_path / "c"), TrainConfig(batch_size=64, total_tokens=640, progress=False)
    )
    assert result.steps == 10
    with pytest.raises(ValueError, match="d_in=32, but the SAE has d_in=16"):
        train(
            SAE(SAEConfig(arch="topk", d_in=16, d_sae=64, k=4)),
            str(tmp_path / "c"),
            TrainConfig(progress=False),
        )


def test_streaming_mixes_contexts_and_matches_the_cache(lm, text, tmp_path):
    from saelab.data.streaming import harvested_activations, shuffle_buffer, streamed_source

    cache = build_cache(
        lm, tmp_path / "c", _spec(text), tokens=10_000, shard_tokens=10_000, progress=False
    )
    cached = torch.cat(list(cache.chunks(1000)))
    streamed = torch.cat(list(harvested_activations(lm, _spec(text), batch_contexts=16)))
    torch.testing.assert_close(streamed, cached[: len(streamed)])
    shuffled = torch.cat(list(shuffle_buffer(iter(streamed.split(50)), size=400, seed=0)))
    rows = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert rows(shuffled) == rows(streamed) and not torch.equal(shuffled, streamed)
    source = streamed_source(lm, _spec(text), buffer_tokens=256)
    sae = SAE(SAEConfig(arch="topk", d_in=32, d_sae=64, k=4), seed=0)
    assert (
        train(sae, source, TrainConfig(batch_size=64, total_tokens=640, progress=False)).steps == 10
    )


def test_each_rank_reads_only_its_own_shards(lm, text, tmp_path, monkeypatch):
    cache = build_cache(lm, tmp_path / "c", _spec(text), 600, shard_tokens=100, progress=False)
    n_shards = len(cache.shards)
    read: dict[int, set] = {0: set(), 1: set()}
    original = ActivationCache.load_shard
    for r in (0, 1):
        monkeypatch.setattr(
            ActivationCache,
            "load_shard",
            lambda self, i, r=r: read[r].add(self.shard_ids[i]) or original(self, i),
        )
        part = cache.batches(50, seed=3, part=(r, 2))
        rows = torch.cat([next(part) for _ in range(6)])
        assert rows.shape == (300, cache.d_in)
    assert read[0] == set(range(0, n_shards, 2)) and read[1] == set(range(1, n_shards, 2))
    # a part is the shuffled stream of its sub-cache, and resumes at a rank-local position
    resumed = cache.batches(50, seed=3, skip_tokens=100, part=(1, 2))
    again = cache.batches(50, seed=3, part=(1, 2))
    for _ in range(2):
        next(again)
    torch.testing.assert_close(next(resumed), next(again))
    with pytest.raises(CacheError, match="cannot be split over 99 processes"):
        cache.batches(50, seed=0, part=(0, 99))


def test_a_request_beyond_the_text_harvests_it_all_once(lm, text, tmp_path, monkeypatch):
    from saelab.data import pipeline

    cache = build_cache(
        lm, tmp_path / "c", _spec(text), tokens=10**6, shard_tokens=500, progress=False
    )
    assert cache.manifest["text_exhausted"] and cache.n_tokens < 10**6
    monkeypatch.setattr(
        pipeline, "load_model", lambda *a, **k: pytest.fail("the whole text is cached")
    )
    monkeypatch.setattr(pipeline, "cache_dir", lambda root, spec: tmp_path / "c")
    (again,) = pipeline.ensure_caches([(_spec(text), 2 * 10**6)], progress=False)
    assert again.n_tokens == cache.n_tokens


POINTS = [HookPoint(1, "resid_pre"), HookPoint(0, "resid_post"), HookPoint(1, "mlp_in")]


def _build_many(lm, text, root, tokens=400, points=POINTS):
    return build_caches(
        lm,
        {point: root / point.name for point in points},
        _spec(text),
        tokens=tokens,
        shard_tokens=120,
        batch_contexts=4,
        progress=False,
    )


def test_several_hook_points_from_one_pass_equal_separate_caches(lm, text, tmp_path, monkeypatch):
    passes = []
    monkeypatch.setattr(
        harvesting, "harvest_many", lambda *a, **k: passes.append(1) or harvest_many(*a, **k)
    )
    many = _build_many(lm, text, tmp_path / "many")
    one_pass_each = len(passes)
    alone = build_cache(
        lm, tmp_path / "alone", replace(_spec(text), site="mlp_in"), tokens=400, shard_tokens=120,
        batch_contexts=4, progress=False,
    )  # fmt: skip
    assert len(passes) == 2 * one_pass_each  # three hook points cost what one does
    together, separate = _all(many["layers.1.mlp_in"]), _all(alone)
    for key in ("activations", "context", "position"):
        torch.testing.assert_close(together[key], separate[key], rtol=0, atol=0)
    # resid_pre of block 1 is resid_post of block 0: aligned caches give equal shuffled batches
    a = many["layers.1.resid_pre"].batches(64, seed=3)
    b = many["layers.0.resid_post"].batches(64, seed=3)
    for _ in range(8):
        torch.testing.assert_close(next(a), next(b), rtol=0, atol=0)
    assert many["layers.1.mlp_in"].spec.site == "mlp_in"


def test_a_hook_point_cache_ahead_of_the_others_is_cut_back_on_resume(lm, text, tmp_path):
    whole = _build_many(lm, text, tmp_path / "whole")
    root = tmp_path / "cut"
    _build_many(lm, text, root, tokens=250)
    ahead = root / "layers.0.resid_post"
    _build_many(lm, text, root, tokens=400, points=[HookPoint(0, "resid_post")])
    manifest = json.loads((ahead / "manifest.json").read_text())
    assert manifest["n_tokens"] >= 400  # one cache went on alone: the others are behind
    resumed = _build_many(lm, text, root)
    for name, cache in whole.items():
        torch.testing.assert_close(_all(resumed[name])["activations"], _all(cache)["activations"])
    with pytest.raises(CacheError, match="holds the caches of 3 hook points .*layers.0.resid_post"):
        ActivationCache(root)
