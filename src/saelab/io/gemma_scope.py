"""Gemma Scope and Gemma Scope 2 (Lieberum et al. 2024; google/gemma-scope-2b-pt-res,
google/gemma-scope-2-1b-pt etc.): one folder per SAE, `layer_N/width_16k/average_l0_K/params.npz`
(Gemma Scope) or `.../params.safetensors` with a config.json of `architecture: jump_relu`
(Gemma Scope 2), holding float32 W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
b_dec [d_in] and threshold [d_sae] (spelled w_enc, w_dec in Gemma Scope 2 and some Gemma Scope
files). A JumpReLU SAE whose encoder does not subtract b_dec: codes = relu(pre) * (pre > θ),
pre = x @ W_enc + b_enc, as SAELens 6.54's gemma_2_ / gemma_3_sae_huggingface_loader read it,
so b_enc absorbs b_dec @ W_enc (folds.fold_input_bias). The model and layer come from the folder
names and config.json as SAELens takes them; the hook point only where it is saelab's
resid_post (Gemma's mlp_out hooks sit after its post-MLP norm, attention ones on hook_z).
Embedding SAEs are rescaled by sqrt(d_in) as SAELens does. Transcoders (a `transcoders` release,
or a Gemma Scope 2 transcoder folder) load as saelab transcoders: the same tensors, b_dec the
output bias, and Gemma Scope 2's affine_skip_connection [d_out, d_in] as a skip path (applied as
x @ W_skip^T, as SAELens's JumpReLUSkipTranscoder: saelab's W_skip is its transpose); their hook
points only where Gemma Scope 2's config names modules saelab's sites are (the MLP's input and
output). Cross-layer transcoders (CLTs) are refused. params.npz is read with
allow_pickle=False."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..sae.config import SAEConfig
from .folds import fold_input_bias
from .format import SAEFormatError, read_safetensors
from .jsonfile import read_json_object

PARAMS = "params.npz"
PARAMS_2, CONFIG_2 = "params.safetensors", "config.json"  # Gemma Scope 2
RELEASE = re.compile(r"gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att|transcoders)")


def params_file(path: Path) -> Path | None:
    """The weights file of a Gemma Scope (1 or 2) folder, or None."""
    return next((path / name for name in (PARAMS, PARAMS_2) if (path / name).is_file()), None)


def read_params(file: Path) -> dict[str, torch.Tensor]:
    """The arrays of a params.npz or params.safetensors as float32 tensors, w_* spelled W_*."""
    if file.suffix == ".safetensors":
        arrays = {key: t.numpy() for key, t in read_safetensors(file).items()}
    else:
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
    """What the folder names (and Gemma Scope 2's config.json) say: the model, layer and hook
    point, and the release."""
    text = str(path.resolve()).replace("--", "/")
    config: dict = {"embedding": "embedding" in text, "transcoder": "transcoder" in text}
    if "clt" in text.split("/")[-1]:
        raise ConfigError(f"{path} is a Gemma Scope cross-layer transcoder (CLT): not supported")
    layer = re.search(r"layer_(\d+)", text)
    if layer:
        config["layer"] = int(layer[1])
    release = RELEASE.search(text)
    if release:
        size, kind, hook = release.groups()
        config["release"] = release[0]
        config["model"] = f"google/gemma-2-{size}" + ("-it" if kind == "it" else "")
        if hook == "res":
            config["site"] = "resid_post"
    if (path / CONFIG_2).is_file():
        raw = read_json_object(path / CONFIG_2, SAEFormatError)
        if raw.get("hf_hook_point_out"):
            config["transcoder"] = True
            config.update(_hook_sites(raw))
        if raw.get("architecture") != "jump_relu":
            raise ConfigError(
                f"{path / CONFIG_2}: architecture {raw.get('architecture')!r} is not a Gemma "
                "Scope 2 SAE saelab reads (jump_relu)"
            )
        config["model"] = gemma_3_model(str(raw.get("model_name", "")))
        config["release"] = "gemma-scope-2"
        if "resid_post" in text and not config["transcoder"]:
            config["site"] = "resid_post"
    return config


# Gemma 3 module outputs that are saelab's sites (Gemma Scope 2's hf_hook_point_in/out)
HF_SITES = {
    r"model\.layers\.(\d+)\.pre_feedforward_layernorm\.output": "mlp_in",
    r"model\.layers\.(\d+)\.mlp\.input": "mlp_in",
    r"model\.layers\.(\d+)\.mlp\.output": "mlp_out",
    r"model\.layers\.(\d+)\.output": "resid_post",
}


def _hook_sites(raw: dict) -> dict:
    """A Gemma Scope 2 transcoder's hook points as saelab's (site, target_layer, target_site),
    where its config names modules whose output is one of saelab's sites."""
    out = {"hf_hook_point_in": raw.get("hf_hook_point_in")}
    out["hf_hook_point_out"] = raw.get("hf_hook_point_out")
    for key, prefix in (("hf_hook_point_in", ""), ("hf_hook_point_out", "target_")):
        for pattern, site in HF_SITES.items():
            found = re.fullmatch(pattern, str(raw.get(key)))
            if found:
                out.update({f"{prefix}site": site, f"{prefix}layer": int(found[1])})
    return out


def gemma_3_model(name: str) -> str:
    """A Gemma Scope 2 config's model_name as the Hub names the model, as SAELens maps it."""
    name = name if "google" in name else "google/" + name
    name = name.replace("-v3", "-3")
    return name.replace("-pt", "") if "270m" in name else name


def from_gemma_scope(config: dict, tensors: dict[str, torch.Tensor]) -> tuple[SAEConfig, dict]:
    """(SAEConfig, tensors in saelab's file layout) of a Gemma Scope SAE."""
    out = {name: tensors[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    (d_in, d_sae), transcoder = out["W_enc"].shape, config["transcoder"]
    if not transcoder and out["W_dec"].shape != (d_sae, d_in):
        raise ConfigError(
            f"W_dec has shape {tuple(out['W_dec'].shape)}, W_enc {(d_in, d_sae)}: not a Gemma "
            "Scope SAE"
        )
    if config["embedding"]:  # trained on embeddings scaled by sqrt(d_in), as SAELens undoes
        out["W_enc"], out["W_dec"] = out["W_enc"] / math.sqrt(d_in), out["W_dec"] * math.sqrt(d_in)
    skip = transcoder and "affine_skip_connection" in tensors
    if skip:  # [d_out, d_in], applied transposed
        out["W_skip"] = tensors["affine_skip_connection"].T.contiguous()
    keys = ("release", "model", "layer", "site", "target_layer", "target_site")
    keys += ("hf_hook_point_in", "hf_hook_point_out")
    metadata = {key: config[key] for key in keys if config.get(key) is not None}
    cfg = SAEConfig(
        arch="jumprelu",
        d_in=d_in,
        d_sae=d_sae,
        input_scaling="none",
        metadata=metadata,
        l0_coefficient=0.0,
        d_out=out["W_dec"].shape[1] if transcoder else None,
        skip=skip,
    )
    # a transcoder's encoder reads x itself and its b_dec is the output's bias: nothing to fold
    return cfg, out if transcoder else fold_input_bias(out)
