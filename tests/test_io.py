"""SAE directory format: round trip, folding, and refusal of bad files."""

import json
import pickle

import pytest
import torch
from conftest import estimate_threshold, make_sae, randomize

from saelab import SAE
from saelab.io.format import SAEFormatError
from saelab.sae.model import SAE as SAEModule
from saelab.sae.registry import ARCHITECTURES

ARCHS = list(ARCHITECTURES)


def _ready(arch, **kw):
    sae = randomize(make_sae(arch, **kw))
    if (
        "threshold" in sae.arch.unset_when_nan
    ):  # batch top-k rules: estimate the inference threshold
        estimate_threshold(sae, torch.randn(64, 16))
    return sae.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_gives_identical_codes(arch, tmp_path):
    sae = _ready(arch)
    sae.save(tmp_path / "sae")
    loaded = SAE.load(tmp_path / "sae")
    x = torch.randn(32, 16)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "topafa"])
def test_loading_draws_no_weights_and_holds_the_files_tensors(arch, tmp_path, monkeypatch):
    """SAE.load neither draws a random dictionary to overwrite nor copies the file's tensors: a
    dictionary is held once while it loads."""
    sae = _ready(arch)
    sae.save(tmp_path / "sae")
    monkeypatch.setattr(type(sae.arch), "initial_weights", lambda *a: pytest.fail("drew weights"))
    read = {}
    original = SAEModule.adopt
    monkeypatch.setattr(
        SAEModule, "adopt", lambda self, state: original(self, read.update(state) or state)
    )
    loaded = SAE.load(tmp_path / "sae")
    assert loaded.W_dec.data_ptr() == read["W_dec"].data_ptr()
    assert not any(t.is_meta for t in loaded.state_dict().values())
    torch.testing.assert_close(loaded.W_enc, sae.W_enc, rtol=0, atol=0)


def test_adopt_casts_and_keeps_the_modules_parameters_trainable():
    sae = SAEModule(make_sae("topk").cfg, initialise=False)
    assert sae.W_enc.is_meta and not sae.initialized
    state = {**SAEModule(sae.cfg, seed=0).state_dict()}
    state["W_enc"] = state["W_enc"].T.contiguous().T.half()  # another dtype and layout
    sae.adopt(state)
    assert sae.initialized and sae.W_enc.dtype == torch.float32 and sae.W_enc.is_contiguous()
    assert isinstance(sae.W_enc, torch.nn.Parameter) and sae.W_enc.requires_grad
    with pytest.raises(RuntimeError, match="Missing key"):
        SAEModule(sae.cfg, initialise=False).adopt({"W_dec": state["W_dec"]})


@pytest.mark.parametrize("arch", ARCHS)
def test_expected_norm_scale_is_folded_on_save(arch, tmp_path):
    sae = _ready(arch, input_scaling="expected_norm")
    sae.input_scale.fill_(0.05)  # raw activations ~20x larger than the SAE's working units
    x = torch.randn(32, 16) * 20
    codes, x_hat = sae.encode(x).detach(), sae(x).detach()
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["input_scale"] == 1.0 and cfg["metadata"]["folded_input_scale"] == pytest.approx(
        0.05
    )
    loaded = SAE.load(tmp_path / "sae")
    torch.testing.assert_close(loaded.encode(x), codes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded(x), x_hat, rtol=1e-4, atol=1e-4)
    # a plain matmul on the raw tensors, as another library would do it, reconstructs raw inputs
    from safetensors.torch import load_file

    t = load_file(str(tmp_path / "sae" / "sae.safetensors"))
    torch.testing.assert_close(codes @ t["W_dec"] + t["b_dec"], x_hat, rtol=1e-4, atol=1e-4)


def test_per_token_scaling_is_stored_and_undone(tmp_path):
    sae = _ready("topk", input_scaling="per_token")
    x = torch.randn(8, 16) * 7 + 3
    mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True) + 1e-5
    f = sae.encode(x)
    want = (f @ sae.W_dec + sae.b_dec) * std + mean
    torch.testing.assert_close(sae(x), want)
    with pytest.raises(TypeError, match="per_token"):
        sae.decode(f)
    sae.save(tmp_path / "s")
    torch.testing.assert_close(SAE.load(tmp_path / "s")(x), want)


def test_file_names_and_shapes(tmp_path):
    from safetensors.torch import load_file

    _ready("jumprelu", k=4).save(tmp_path / "j")
    t = load_file(str(tmp_path / "j" / "sae.safetensors"))
    assert {n: tuple(v.shape) for n, v in t.items()} == {
        "W_enc": (16, 64),
        "b_enc": (64,),
        "W_dec": (64, 16),
        "b_dec": (16,),
        "threshold": (64,),
        "l0_lambda": (),
    }


def test_missing_directory():
    with pytest.raises(SAEFormatError, match="no SAE directory"):
        SAE.load("/nonexistent/sae")


def test_truncated_weights(tmp_path):
    _ready("topk").save(tmp_path)
    f = tmp_path / "sae.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(SAEFormatError, match="corrupt|truncated"):
        SAE.load(tmp_path)


def test_garbage_weights(tmp_path):
    _ready("topk").save(tmp_path)
    (tmp_path / "sae.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(SAEFormatError, match="corrupt|truncated|not a valid"):
        SAE.load(tmp_path)


def test_pickle_is_refused_and_never_executed(tmp_path):
    _ready("topk").save(tmp_path)
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "sae.safetensors").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(SAEFormatError, match="pickle"):
        SAE.load(tmp_path)
    torch.save({"W_enc": torch.zeros(1)}, tmp_path / "sae.safetensors")
    with pytest.raises(SAEFormatError, match="pickle"):
        SAE.load(tmp_path)
    assert not marker.exists()


def test_config_that_disagrees_with_tensors(tmp_path):
    _ready("topk").save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["d_sae"] = 32
    cfg["k"] = 4
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="has shape .* needs"):
        SAE.load(tmp_path)
    cfg["d_sae"], cfg["arch"] = 64, "jumprelu"
    del cfg["aux_k"], cfg["aux_coefficient"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFormatError, match="missing \\['threshold'\\]"):
        SAE.load(tmp_path)


def test_bad_config_values(tmp_path):
    _ready("topk").save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "arch": "gated2"}))
    with pytest.raises(SAEFormatError, match="unknown arch"):
        SAE.load(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFormatError, match="not valid JSON"):
        SAE.load(tmp_path)
    (tmp_path / "cfg.json").unlink()
    with pytest.raises(SAEFormatError, match="no cfg.json"):
        SAE.load(tmp_path)


def test_untrained_batchtopk_round_trips_and_still_refuses_eval(tmp_path):
    make_sae("batchtopk").save(tmp_path)
    loaded = SAE.load(tmp_path)
    assert isinstance(loaded, SAEModule)
    with pytest.raises(RuntimeError, match="threshold"):
        loaded.encode(torch.randn(2, 16))


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu", "topafa"])
def test_sae_directories_of_saelab_0_1_still_load(arch, tmp_path):
    """saelab 0.1 wrote every architecture's settings into cfg.json (no format_version) and only
    the inference tensors; such a directory loads with the same codes."""
    sae = _ready(arch)
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    old_fields = {
        "k": None,
        "l1_coefficient": 5.0,
        "l0_coefficient": None,
        "jumprelu_bandwidth": 0.001,
        "jumprelu_init_threshold": 0.001,
        "afa_coefficient": 1 / 32,
        "aux_k": 512,
        "aux_coefficient": 1 / 32,
        "threshold_momentum": 0.9,
    }
    cfg = {**old_fields, **{k: v for k, v in cfg.items() if k != "format_version"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "sae.safetensors"))
    old = {
        name: tensors[name]
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
        if name in tensors
    }
    save_file(old, str(tmp_path / "sae.safetensors"))
    x = torch.randn(20, 16)
    torch.testing.assert_close(SAE.load(tmp_path).encode(x), sae.encode(x), rtol=0, atol=0)


def test_a_safetensors_header_whose_length_starts_like_a_pickle_is_read(tmp_path):
    """A header of 384 (0x180) bytes: the file's first byte is 0x80, pickle's opening byte."""
    import json
    import struct

    from saelab.io.format import read_safetensors

    data = torch.arange(6, dtype=torch.float32)
    header = json.dumps({"W": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}).encode()
    header += b" " * (384 - len(header))
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 384) + header + data.numpy().tobytes())
    assert path.read_bytes()[0] == 0x80
    torch.testing.assert_close(read_safetensors(path)["W"], data.reshape(2, 3))
