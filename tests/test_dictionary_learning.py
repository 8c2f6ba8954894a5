"""dictionary_learning directories: each dict_class written by the test in the library's layout
and checked against its forward formula in numpy; round trips saelab -> dictionary_learning ->
saelab with identical codes; files that must be refused."""

import json

import numpy as np
import pytest
import torch
from conftest import estimate_threshold, make_sae, randomize

from saelab import SAE
from saelab.config import ConfigError
from saelab.io.external import detect_format, export
from saelab.io.format import SAEFormatError

D, H = 8, 24


def _write(path, dict_class, tensors, **trainer):
    path.mkdir()
    (path / "config.json").write_text(
        json.dumps(
            {"trainer": {"dict_class": dict_class, "activation_dim": D, "dict_size": H, **trainer}}
        )
    )
    torch.save(tensors, path / "ae.pt")
    return path


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _n(t):
    return t.numpy().astype(np.float64)


def _relu(a):
    return np.maximum(a, 0)


def _x(seed=5):
    return torch.randn(40, D, generator=_g(seed))


def test_autoencoder_standard(tmp_path):
    g = _g()
    t = {
        "bias": torch.randn(D, generator=g),
        "encoder.weight": torch.randn(H, D, generator=g),
        "encoder.bias": torch.randn(H, generator=g) * 0.1,
        "decoder.weight": torch.randn(D, H, generator=g),
    }
    sae = SAE.load_any(_write(tmp_path / "dl", "AutoEncoder", t))
    x = _x()
    f = _relu((_n(x) - _n(t["bias"])) @ _n(t["encoder.weight"]).T + _n(t["encoder.bias"]))
    assert sae.cfg.arch == "relu" and detect_format(tmp_path / "dl") == "dictionary_learning"
    np.testing.assert_allclose(_n(sae.encode(x).detach()), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        _n(sae(x).detach()), f @ _n(t["decoder.weight"]).T + _n(t["bias"]), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("dict_class", ["AutoEncoderTopK", "BatchTopKSAE"])
def test_topk_and_batchtopk(tmp_path, dict_class):
    g = _g(1)
    t = {
        "encoder.weight": torch.randn(H, D, generator=g),
        "encoder.bias": torch.randn(H, generator=g) * 0.1,
        "decoder.weight": torch.randn(D, H, generator=g),
        "b_dec": torch.randn(D, generator=g),
        "k": torch.tensor(3, dtype=torch.int),
        "threshold": torch.tensor(0.4),
    }
    sae = SAE.load_any(_write(tmp_path / "dl", dict_class, t, k=3)).eval()
    x = _x()
    post = _relu((_n(x) - _n(t["b_dec"])) @ _n(t["encoder.weight"]).T + _n(t["encoder.bias"]))
    if dict_class == "AutoEncoderTopK":  # the 3 largest of each row
        cut = np.sort(post, axis=1)[:, -3][:, None]
        f = post * (post >= cut)
    else:  # inference: above the global threshold
        f = post * (post > 0.4)
    assert (
        sae.cfg.arch == ("topk" if dict_class == "AutoEncoderTopK" else "batchtopk")
        and sae.cfg.k == 3
    )
    np.testing.assert_allclose(_n(sae.encode(x).detach()), f, rtol=1e-5, atol=1e-5)


def test_jumprelu_folds_b_dec_into_the_encoder_bias(tmp_path):
    g = _g(2)
    t = {
        "W_enc": torch.randn(D, H, generator=g),
        "b_enc": torch.randn(H, generator=g) * 0.1,
        "W_dec": torch.randn(H, D, generator=g),
        "b_dec": torch.randn(D, generator=g),
        "threshold": torch.rand(H, generator=g) * 0.5 + 0.05,
    }
    sae = SAE.load_any(_write(tmp_path / "dl", "JumpReluAutoEncoder", t)).eval()
    x = _x()
    pre = _n(x) @ _n(t["W_enc"]) + _n(t["b_enc"])  # its encoder does not subtract b_dec
    np.testing.assert_allclose(
        _n(sae.encode(x).detach()), _relu(pre * (pre > _n(t["threshold"]))), rtol=1e-4, atol=1e-5
    )


def test_gated(tmp_path):
    g = _g(3)
    t = {
        "decoder_bias": torch.randn(D, generator=g),
        "encoder.weight": torch.randn(H, D, generator=g),
        "r_mag": torch.randn(H, generator=g) * 0.1,
        "gate_bias": torch.randn(H, generator=g) * 0.1,
        "mag_bias": torch.randn(H, generator=g) * 0.1,
        "decoder.weight": torch.randn(D, H, generator=g),
    }
    sae = SAE.load_any(_write(tmp_path / "dl", "GatedAutoEncoder", t)).eval()
    x = _x()
    enc = (_n(x) - _n(t["decoder_bias"])) @ _n(t["encoder.weight"]).T
    f = (enc + _n(t["gate_bias"]) > 0) * _relu(np.exp(_n(t["r_mag"])) * enc + _n(t["mag_bias"]))
    np.testing.assert_allclose(_n(sae.encode(x).detach()), f, rtol=1e-4, atol=1e-5)


def _trained(arch, **kw):
    sae = randomize(make_sae(arch, d_in=D, d_sae=H, k=3, **kw))
    if arch in ("batchtopk", "matryoshka"):
        estimate_threshold(sae, _x(9))
    if arch == "jumprelu":
        with torch.no_grad():
            sae.log_threshold.copy_(torch.rand(H, generator=_g(4)).mul(0.3).add(0.05).log())
    return sae.eval()


@pytest.mark.parametrize(
    "arch, kw",
    [
        ("relu", {}),
        ("topk", {}),
        ("batchtopk", {}),
        ("jumprelu", {}),
        ("gated", {}),
        ("matryoshka", {"matryoshka_widths": [6, 12, 24]}),
        ("topk", {"input_scaling": "expected_norm", "input_scale": 0.5}),
    ],
)
def test_round_trip_gives_identical_codes(tmp_path, arch, kw):
    sae = _trained(arch, **kw)
    export(sae, tmp_path / "dl", "dictionary_learning")
    back = SAE.load_any(tmp_path / "dl").eval()
    x = _x(7) * 3
    assert back.cfg.arch == arch
    torch.testing.assert_close(back.encode(x), sae.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back(x), sae(x), rtol=1e-4, atol=1e-4)
    config = json.loads((tmp_path / "dl" / "config.json").read_text())["trainer"]
    assert config["activation_dim"] == D and config["dict_size"] == H
    if arch == "matryoshka":
        assert back.cfg.matryoshka_widths == [6, 12, 24]


def test_what_dictionary_learning_cannot_hold_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="per-token"):
        export(_trained("topk", input_scaling="per_token"), tmp_path / "a", "dictionary_learning")
    with pytest.raises(ConfigError, match="no topafa SAE"):
        export(make_sae("topafa", d_in=D, d_sae=H), tmp_path / "b", "dictionary_learning")


class _Payload:
    """Stands for an object a malicious ae.pt would unpickle."""


class _Evil:
    """Unpickling this would create a file: code run by loading."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_bad_directories_are_refused(tmp_path):
    t = {
        "encoder.weight": torch.zeros(H, D),
        "encoder.bias": torch.zeros(H),
        "decoder.weight": torch.zeros(D, H),
        "bias": torch.zeros(D),
        "payload": _Payload(),
    }
    _write(tmp_path / "pickle", "AutoEncoder", t)
    with pytest.raises(
        SAEFormatError, match="object of test_dictionary_learning._Payload.*weights_only=True"
    ):
        SAE.load_any(tmp_path / "pickle")
    marker = tmp_path / "ran"
    _write(tmp_path / "evil", "AutoEncoder", {"bias": torch.zeros(D), "x": _Evil(marker)})
    with pytest.raises(SAEFormatError, match="refuses to unpickle"):
        SAE.load_any(tmp_path / "evil")
    assert not marker.exists()
    (tmp_path / "lonely").mkdir()
    torch.save({}, tmp_path / "lonely" / "ae.pt")
    with pytest.raises(SAEFormatError, match="no config.json"):
        SAE.load_any(tmp_path / "lonely")
    _write(tmp_path / "unknown", "CrossCoder", {"W_enc": torch.zeros(D, H)})
    with pytest.raises(SAEFormatError, match="dict_class 'CrossCoder' is not supported"):
        SAE.load_any(tmp_path / "unknown")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    (tmp_path / "junk" / "ae.pt").write_bytes(b"not a torch file")
    with pytest.raises(SAEFormatError, match="not a readable torch state dict"):
        SAE.load_any(tmp_path / "junk")
