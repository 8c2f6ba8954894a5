"""Gemma Scope (Lieberum et al. 2024; google/gemma-scope-2b-pt-res etc.): one folder per SAE,
`layer_N/width_16k/average_l0_K/params.npz` holding float32 W_enc [d_in, d_sae], W_dec
[d_sae, d_in], b_enc [d_sae], b_dec [d_in] and threshold [d_sae] (some files spell them w_enc,
w_dec). A JumpReLU SAE whose encoder does not subtract b_dec: codes = relu(pre) * (pre > θ),
pre = x @ W_enc + b_enc, as SAELens 6.54's gemma_2_sae_huggingface_loader reads it, so b_enc
absorbs b_dec @ W_enc (folds.fold_input_bias). The model and hook point come from the folder
names (the repo: model size, pt/it, res/mlp/att; layer_N), as SAELens takes them; embedding SAEs
are rescaled by sqrt(d_in) as SAELens does. params.npz is read with allow_pickle=False."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..sae.config import SAEConfig
from .folds import fold_input_bias
from .format import SAEFormatError

PARAMS = "params.npz"
RELEASE = re.compile(r"gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att)")
SITES = {"res": "resid_post", "mlp": "mlp_out"}  # att hooks hook_z, not one of saelab's sites


def read_params(file: Path) -> dict[str, torch.Tensor]:
    """The arrays of a params.npz as float32 tensors, w_* spelled W_*."""
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError) as err:
        raise SAEFormatError(f"{file} is not a readable .npz file ({err})") from None
    return {
        ("W_" + key[2:] if key.startswith("w_") else key): torch.from_numpy(array).float()
        for key, array in arrays.items()
    }


def config_from_path(path: Path) -> dict:
    """What the folder names say: the model, layer and hook point, and the release."""
    text = str(path.resolve()).replace("--", "/")
    config: dict = {}
    layer = re.search(r"layer_(\d+)", text)
    if layer:
        config["layer"] = int(layer[1])
    release = RELEASE.search(text)
    if release:
        size, kind, hook = release.groups()
        config["release"] = release[0]
        config["model"] = f"google/gemma-2-{size}" + ("-it" if kind == "it" else "")
        if hook in SITES:
            config["site"] = SITES[hook]
    config["embedding"] = "embedding" in text
    return config


def from_gemma_scope(config: dict, tensors: dict[str, torch.Tensor]) -> tuple[SAEConfig, dict]:
    """(SAEConfig, tensors in saelab's file layout) of a Gemma Scope SAE."""
    out = {name: tensors[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    d_in, d_sae = out["W_enc"].shape
    if out["W_dec"].shape != (d_sae, d_in):
        raise ConfigError(
            f"W_dec has shape {tuple(out['W_dec'].shape)}, W_enc {(d_in, d_sae)}: not a Gemma "
            "Scope SAE"
        )
    if config["embedding"]:  # trained on embeddings scaled by sqrt(d_in), as SAELens undoes
        out["W_enc"], out["W_dec"] = out["W_enc"] / math.sqrt(d_in), out["W_dec"] * math.sqrt(d_in)
    metadata = {key: config[key] for key in ("release", "model", "layer", "site") if key in config}
    cfg = SAEConfig(
        arch="jumprelu",
        d_in=d_in,
        d_sae=d_sae,
        input_scaling="none",
        metadata=metadata,
        l0_coefficient=0.0,
    )
    return cfg, fold_input_bias(out)
