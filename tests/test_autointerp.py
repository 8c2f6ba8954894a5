"""Autointerp: excerpts and the scorer's arithmetic on a hand-made case, an OpenAI-compatible
endpoint stood in by a local server, and the whole eval on a tiny model's cache."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from conftest import make_sae
from tiny_models import tiny_lm, tiny_tokenizer

from saelab.data.cache import CacheSpec, build_cache
from saelab.eval.saebench.autointerp import (
    SCORE_SYSTEM,
    AutoInterpConfig,
    autointerp,
    excerpt,
    explanation_of,
    parse_prediction,
    score_latent,
)
from saelab.eval.saebench.llm import LLMError, OpenAIChat, chat_model


def _ids(words):
    tok = tiny_tokenizer()
    return [tok.convert_tokens_to_ids(w) for w in words]


def test_excerpts_mark_tokens_above_the_threshold():
    tok = tiny_tokenizer()
    tokens = list(zip(_ids(["w1", "w2", "w3", "w4"]), [0.0, 2.0, 3.0, 0.1]))
    assert excerpt(tok, tokens, 0.5) == "w1<<w2w3>>w4"
    assert excerpt(tok, tokens, None) == "w1w2w3w4"
    assert parse_prediction("2, 5 and 9", 6) == {2, 5} and parse_prediction("None", 6) == set()
    assert explanation_of('This feature fires on "years in dates"\nmore', 200) == "years in dates"
    assert explanation_of("\n1. Explanation: tennis players", 200) == "tennis players"


def test_detection_score_of_a_hand_made_latent():
    """The scorer predicts the excerpts holding w5; one positive excerpt lacks it and one negative
    has it, so 6 of 8 predictions are right and F1 is 2 * 3 / (4 + 4)."""
    tok = tiny_tokenizer()
    positive = [
        (_ids(["w5", "w1"]), True),
        (_ids(["w2", "w5"]), True),
        (_ids(["w5"]), True),
        (_ids(["w9"]), True),
    ]
    negative = [
        (_ids(["w5", "w3"]), False),
        (_ids(["w7"]), False),
        (_ids(["w8"]), False),
        (_ids(["w6"]), False),
    ]
    examples = {
        "generation": [([(t, 1.0) for t in ids], True) for ids, _ in positive[:2]],
        "scoring": [([(t, 0.0) for t in ids], label) for ids, label in positive + negative],
    }
    seen = {}

    def explainer(messages):
        seen["explain"] = messages[1]["content"]
        return "The feature fires on the word w5"

    def scorer(messages):
        assert (
            messages[0]["content"] == SCORE_SYSTEM
            and "fires on the word w5" in messages[1]["content"]
        )
        lines = [line for line in messages[1]["content"].splitlines() if line[:1].isdigit()]
        return ", ".join(line.split(".")[0] for line in lines if "w5" in line)

    record = score_latent(explainer, scorer, tok, examples, 0.5, np.random.default_rng(0), 200)
    assert "1. <<w5w1>>" in seen["explain"]  # both tokens are above the threshold
    assert record["explanation"] == "the word w5"
    assert record["score"] == pytest.approx(6 / 8) and record["f1"] == pytest.approx(6 / 8)
    assert record["n_scored"] == 8 and record["n_positive"] == 4


class _FakeChat(BaseHTTPRequestHandler):
    requests = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeChat.requests.append((self.path, dict(self.headers), body))
        system = body["messages"][0]["content"]
        content = "1, 3" if system == SCORE_SYSTEM else "tokens w1 to w9"
        reply = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": content}}]}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture()
def endpoint():
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeChat.requests.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_openai_compatible_endpoint(endpoint, monkeypatch):
    monkeypatch.setenv("SAELAB_TEST_KEY", "not-a-secret")
    chat = OpenAIChat(endpoint, model="local-model", key_env="SAELAB_TEST_KEY")
    assert (
        chat([{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])
        == "tokens w1 to w9"
    )
    path, headers, body = _FakeChat.requests[-1]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer not-a-secret"
    assert (
        body["model"] == "local-model"
        and body["temperature"] == 0
        and body["messages"][1]["content"] == "y"
    )
    with pytest.raises(LLMError, match="SAELAB_UNSET_KEY"):
        OpenAIChat(endpoint, key_env="SAELAB_UNSET_KEY")
    with pytest.raises(LLMError, match="cannot reach the chat endpoint"):
        OpenAIChat("http://127.0.0.1:9/v1", timeout=5)([{"role": "user", "content": "x"}])
    with pytest.raises(LLMError, match="one chat model"):
        chat_model(None, None)


def test_autointerp_on_a_tiny_cache(endpoint, tmp_path):
    text = tmp_path / "docs.jsonl"
    text.write_text(
        "\n".join(
            json.dumps({"text": " ".join(f"w{(i * 7 + j * 3) % 100}" for j in range(30))})
            for i in range(80)
        )
    )
    spec = CacheSpec(
        model="tiny",
        layer=1,
        site="resid_post",
        dataset=str(text),
        split="train",
        ctx_len=16,
        dtype="float32",
    )
    cache = build_cache(
        tiny_lm("llama"), tmp_path / "cache", spec, 1000, shard_tokens=300, progress=False
    )
    sae = make_sae("topk", d_in=32, d_sae=64, k=6)
    chat = OpenAIChat(endpoint, model="m")
    doc = autointerp(
        sae,
        cache,
        tiny_tokenizer(),
        chat,
        cfg=AutoInterpConfig(n_latents=3, buffer=4),
        progress=False,
    )
    assert doc["eval_type_id"] == "autointerp"
    assert set(doc["eval_result_metrics"]["autointerp"]) == {
        "autointerp_score",
        "autointerp_std_dev",
        "autointerp_f1",
    }
    details = doc["eval_result_details"]
    assert len(details) == 3 and doc["eval_config"]["latents"] == [d["latent"] for d in details]
    for (
        d
    ) in details:  # 2 top + 2 sampled + 10 random excerpts, of which the fake scorer names 1 and 3
        assert (
            d["explanation"] == "tokens w1 to w9" and d["n_scored"] == 14 and 0 <= d["score"] <= 1
        )
    assert doc["eval_result_metrics"]["autointerp"]["autointerp_score"] == pytest.approx(
        np.mean([d["score"] for d in details])
    )
    assert len(_FakeChat.requests) == 6  # one explanation and one scoring per latent
    with pytest.raises(ValueError, match="out of range"):
        autointerp(
            sae,
            cache,
            tiny_tokenizer(),
            chat,
            cfg=AutoInterpConfig(override_latents=[64]),
            progress=False,
        )


def test_a_local_causal_lm_answers_through_its_chat_template(tmp_path):
    from tiny_models import saved_model

    from saelab.eval.saebench.llm import LocalChat

    model = saved_model(tmp_path / "model")
    tok = tiny_tokenizer()
    plain = LocalChat(str(model), max_tokens=5)
    messages = [{"role": "system", "content": "w1 w2"}, {"role": "user", "content": "w3"}]
    reply = plain(messages)
    assert isinstance(reply, str) and plain(messages) == reply  # greedy: the same answer twice
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tok.save_pretrained(model)
    templated = LocalChat(str(model), max_tokens=5)
    ids = templated.lm.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=False
    )
    assert ids == templated.lm.tokenizer("w1 w2 w3 ", add_special_tokens=False)["input_ids"]
    assert isinstance(templated(messages), str)


def test_weighted_rows_draw_in_proportion_to_squared_activation_below_the_top():
    """SAEBench's get_iw_sample_indices: probability proportional to value^2, only below the
    weakest top example; contexts already shown are not drawn twice."""
    import torch

    from saelab.eval.examples import weighted_rows

    values = torch.tensor([0.0, 1.0, 2.0, 3.0, 9.0])
    context = torch.arange(5)
    counts = np.zeros(5)
    for seed in range(3000):
        (row,) = weighted_rows(values, context, 1, np.random.default_rng(seed), below=9.0)
        counts[row] += 1
    assert counts[0] == counts[4] == 0  # zero, and at or above the top threshold
    np.testing.assert_allclose(counts[1:4] / 3000, np.array([1, 4, 9]) / 14, atol=0.03)
    used = {2, 3}
    again = weighted_rows(values, context, 3, np.random.default_rng(0), used=used, below=9.0)
    assert again == [1]


def test_random_excerpts_are_negative_and_the_top_split_is_a_random_draw():
    """SAEBench's gather_data: the random excerpts get zero activations (negative even where the
    latent fires), and which top examples are scored is a random permutation, not fixed ranks."""
    import torch

    from saelab.eval.examples import LatentCodes
    from saelab.eval.saebench.autointerp import latent_examples_for_scoring

    n = 40  # one token per context, the latent fires on every one of them
    values = torch.arange(1, n + 1, dtype=torch.float32)
    data = LatentCodes(
        counts=torch.tensor([n]),
        codes=values[:, None],
        context=torch.arange(n),
        position=torch.zeros(n, dtype=torch.long),
        token_ids={c: torch.tensor([c]) for c in range(n)},
    )
    cfg = AutoInterpConfig(buffer=0, n_random_ex_for_scoring=10)
    scored_tops = set()
    for seed in range(8):
        examples, _ = latent_examples_for_scoring(
            data, data.row_of(), values, cfg, np.random.default_rng(seed)
        )
        scoring = examples["scoring"]
        assert len(examples["generation"]) == 15 and len(scoring) == 14
        assert [positive for _, positive in scoring] == [True] * 4 + [False] * 10
        assert all(tokens[0][1] > 0 for tokens, _ in scoring[4:])  # the latent fires there
        scored_tops.add(tuple(sorted(int(tokens[0][0]) for tokens, _ in scoring[:2])))
    assert len(scored_tops) > 1 and all(min(t) >= n - 12 for t in scored_tops)
