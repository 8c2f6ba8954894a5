"""Writes the Gemma Scope fixtures of tests/test_library_files.py: a params.npz (Gemma Scope)
and a params.safetensors with lower-case names plus config.json (Gemma Scope 2) in the
releases' layouts and dtype under their folder names, and the codes SAELens 6.54's own loaders
(loading/pretrained_sae_loaders.py, gemma_2_ and gemma_3_sae_huggingface_loader, with the Hub
downloads pointed at the local files) and its JumpReLU SAE give. Run in the SAELens environment:

    python tests/data/gemma_scope/make.py tests/data/gemma_scope
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from sae_lens import (
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUTranscoder,
)
from sae_lens.loading import pretrained_sae_loaders as loaders
from safetensors.torch import save_file

D_IN, D_SAE = 256, 64  # smaller than the release (2304 x 16k): the same layout and dtype
REPO, FOLDER = "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"


def main(root: Path) -> None:
    folder = root / "gemma-scope-2b-pt-res" / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    params = {
        "W_enc": (g.normal(size=(D_IN, D_SAE)) * 0.02).astype(np.float32),
        "W_dec": (g.normal(size=(D_SAE, D_IN)) * 0.02).astype(np.float32),
        "b_enc": (g.normal(size=D_SAE) * 0.1).astype(np.float32),
        "b_dec": (g.normal(size=D_IN) * 0.5).astype(np.float32),
        "threshold": np.abs(g.normal(size=D_SAE) * 0.2).astype(np.float32),
    }
    np.savez(folder / "params.npz", **params)
    loaders.hf_hub_download = lambda **kwargs: str(folder / "params.npz")
    cfg, state, _ = loaders.gemma_2_sae_huggingface_loader(REPO, FOLDER)
    cfg["d_sae"] = D_SAE  # the folder says 16k; this fixture's dictionary is smaller
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False))
    sae.load_state_dict(state)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        codes = sae.encode(x)
    save_file({"x": x, "codes": codes}, str(root / "codes.safetensors"))
    print(cfg["hook_name"], cfg["model_name"], "L0", float((codes != 0).sum(1).float().mean()))
    gemma_scope_2(root / "gemma-scope-2-1b-pt" / FOLDER_2, params, x)
    transcoder(root / "gemma-scope-2b-pt-transcoders" / FOLDER, params, x)
    skip_transcoder(root / "gemma-scope-2-1b-pt" / TRANSCODER_2, params, x)


FOLDER_2 = "resid_post/layer_7_width_16k_l0_medium"


def gemma_scope_2(folder: Path, params: dict, x: torch.Tensor) -> None:
    """The same weights as a Gemma Scope 2 SAE (lower-case names, float32 safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k.lower(): torch.from_numpy(v) for k, v in params.items()}
    save_file(tensors, str(folder / "params.safetensors"))
    config = {
        "architecture": "jump_relu",
        "model_name": "gemma-v3-1b-pt",
        "hf_hook_point_in": "model.layers.7.output",
    }
    (folder / "config.json").write_text(json.dumps(config))
    files = {
        "config.json": folder / "config.json",
        "params.safetensors": folder / "params.safetensors",
    }
    loaders.hf_hub_download = lambda *args, **kwargs: str(
        files[(kwargs.get("filename") or args[1]).split("/")[-1]]
    )
    loaders.get_safetensors_tensor_shapes = lambda *args: {
        k: list(v.shape) for k, v in tensors.items()
    }
    cfg, state, _ = loaders.gemma_3_sae_huggingface_loader("google/gemma-scope-2-1b-pt", FOLDER_2)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False))
    sae.load_state_dict(state)
    with torch.no_grad():
        codes = sae.encode(x)
    save_file({"x": x, "codes": codes}, str(folder.parents[1] / "codes.safetensors"))
    print(cfg["hook_name"], cfg["model_name"], "L0", float((codes != 0).sum(1).float().mean()))


TRANSCODER_2 = "transcoder/layer_7_width_16k_l0_medium_affine"
HOOKS_2 = {  # as Gemma 3's modules are named; saelab maps them to mlp_in and mlp_out
    "hf_hook_point_in": "model.layers.7.pre_feedforward_layernorm.output",
    "hf_hook_point_out": "model.layers.7.mlp.output",
}


def _save_outputs(sae, x: torch.Tensor, file: Path) -> None:
    with torch.no_grad():
        codes = sae.encode(x)
        outputs = sae.decode(codes) if not hasattr(sae, "W_skip") else sae(x)
    save_file({"x": x, "codes": codes, "outputs": outputs.contiguous()}, str(file))
    print(file.parent.name, "L0", float((codes != 0).sum(1).float().mean()))


def transcoder(folder: Path, params: dict, x: torch.Tensor) -> None:
    """A Gemma Scope transcoder (params.npz, d_out = d_in), read by SAELens's
    gemma_2_transcoder_huggingface_loader into its JumpReLUTranscoder."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **params)
    loaders.hf_hub_download = lambda **kwargs: str(folder / "params.npz")
    sizes = {"d_in": D_IN, "d_out": D_IN, "d_sae": D_SAE}  # the folder says 16k of 2304
    cfg, state, _ = loaders.gemma_2_transcoder_huggingface_loader(
        "google/gemma-scope-2b-pt-transcoders", FOLDER, cfg_overrides=sizes
    )
    sae = JumpReLUTranscoder.from_dict(cfg)
    sae.load_state_dict(state)
    _save_outputs(sae, x, folder.parents[3] / "transcoder_codes.safetensors")


def skip_transcoder(folder: Path, params: dict, x: torch.Tensor) -> None:
    """A Gemma Scope 2 skip transcoder (params.safetensors with affine_skip_connection, a
    config.json with affine_connection), read by SAELens's gemma_3 loader into its
    JumpReLUSkipTranscoder."""
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(5)
    tensors = {k.lower(): torch.from_numpy(v) for k, v in params.items()}
    tensors["affine_skip_connection"] = torch.from_numpy(
        (g.normal(size=(D_IN, D_IN)) * 0.05).astype(np.float32)
    )
    save_file(tensors, str(folder / "params.safetensors"))
    config = {"architecture": "jump_relu", "model_name": "gemma-v3-1b-pt", **HOOKS_2}
    config["affine_connection"] = True
    (folder / "config.json").write_text(json.dumps(config))
    files = {name: folder / name for name in ("config.json", "params.safetensors")}
    loaders.hf_hub_download = lambda *args, **kwargs: str(
        files[(kwargs.get("filename") or args[1]).split("/")[-1]]
    )
    loaders.get_safetensors_tensor_shapes = lambda *args: {
        k: list(v.shape) for k, v in tensors.items()
    }
    repo = "google/gemma-scope-2-1b-pt"
    cfg, state, _ = loaders.gemma_3_sae_huggingface_loader(repo, TRANSCODER_2)
    sae = JumpReLUSkipTranscoder.from_dict(cfg)
    sae.load_state_dict(state)
    _save_outputs(sae, x, folder.parents[1] / "skip_transcoder_codes.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
