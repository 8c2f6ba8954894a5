"""OpenAI's sparse_autoencoder releases (Gao et al. 2024; GPT-2 small, e.g.
`gpt2-small/resid_post_mlp_v5_32k/autoencoders/6.pt`): one torch state dict per SAE, read as
their sparse_autoencoder/model.py (Autoencoder.from_state_dict) builds it:

    latents = activation((x' - pre_bias) @ encoder.weight^T + latent_bias)
    recons  = latents @ decoder.weight^T + pre_bias   (then * std + mu when normalised)

with encoder.weight [d_sae, d_in], decoder.weight [d_in, d_sae]; "activation" names the
activation ("TopK" with activation_state_dict {k, postact_fn: "ReLU"}, or "ReLU", the default),
and TopK SAEs take layer-normed inputs, x' = (x - mu) / (std + 1e-5) (their `normalize`, set
exactly when the activation is TopK): saelab's per_token, which maps the reconstruction back with
std + 1e-5 where theirs uses std (a relative difference of 1e-5 / std). pre_bias is saelab's
b_dec, latent_bias its b_enc. The buffers stats_last_nonzero, latents_activation_frequency and
latents_mean_square are training statistics, not part of the map. The file is read with
torch.load(weights_only=True). The model (GPT-2 small) and hook come from the release's path
names (paths.py): resid_post_mlp is saelab's resid_post, resid_post_attn resid_mid,
resid_delta_mlp mlp_out and resid_delta_attn attn_out.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from ..errors import ConfigError
from ..sae.config import SAEConfig
from .format import SAEFormatError

SUFFIX = ".pt"
STATISTICS = ("stats_last_nonzero", "latents_activation_frequency", "latents_mean_square")
SITES = {  # paths.py's locations that are saelab's hook sites
    "resid_post_mlp": "resid_post",
    "resid_post_attn": "resid_mid",
    "resid_delta_mlp": "mlp_out",
    "resid_delta_attn": "attn_out",
}
LOCATION = re.compile(r"resid_(post|delta)_(mlp|attn)|mlp_post_act")


def read_state_dict(file: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the activation fields, the tensors) of an OpenAI .pt file."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SAEFormatError(
            f"{file} is not a torch state dict saelab can read safely ({first})"
        ) from None
    if not isinstance(state, dict):
        raise SAEFormatError(f"{file} holds a {type(state).__name__}, not a state dict")
    fields = {key: state.pop(key) for key in list(state) if not torch.is_tensor(state[key])}
    config = {
        "activation": fields.pop("activation", "ReLU"),
        "k": fields.pop("activation.k", None),
        "postact_fn": fields.pop("activation.postact_fn", None),
        **_activation_fields(fields.pop("activation_state_dict", {})),
        "path": str(file.resolve()),
    }
    if fields:
        raise SAEFormatError(
            f"{file} holds entries saelab does not understand: {', '.join(sorted(fields))}"
        )
    return config, state


def _activation_fields(state: object) -> dict:
    if not isinstance(state, dict):
        raise SAEFormatError(f"activation_state_dict must be a dict, got {type(state).__name__}")
    return {key: state[key] for key in ("k", "postact_fn") if key in state}


def from_openai(cfg: dict, tensors: dict[str, torch.Tensor]) -> tuple[SAEConfig, dict]:
    """(SAEConfig, tensors in saelab's file layout) of an OpenAI sparse_autoencoder state dict."""
    activation = cfg["activation"]
    W_enc = tensors["encoder.weight"].float().T.contiguous()
    d_in, d_sae = W_enc.shape
    for name in STATISTICS:
        tensors.get(name)  # read: statistics of training, not part of the map
    settings: dict = {}
    if activation == "TopK":
        if cfg.get("postact_fn", "ReLU") != "ReLU":
            raise ConfigError(
                f"OpenAI TopK with postact_fn {cfg['postact_fn']!r} is not supported (ReLU)"
            )
        settings["k"] = cfg["k"]
        arch, scaling = "topk", "per_token"
    elif activation == "ReLU":
        arch, scaling = "relu", "none"
    else:
        raise ConfigError(f"OpenAI activation {activation!r} is not supported (TopK, ReLU)")
    sae_cfg = SAEConfig(
        arch=arch,
        d_in=d_in,
        d_sae=d_sae,
        input_scaling=scaling,
        metadata=_metadata(Path(cfg["path"])),
        **settings,
    )
    return sae_cfg, {
        "W_enc": W_enc,
        "b_enc": tensors["latent_bias"].float(),
        "W_dec": tensors["decoder.weight"].float().T.contiguous(),
        "b_dec": tensors["pre_bias"].float(),
    }


def _metadata(path: Path) -> dict:
    """GPT-2 small, the layer (the file's name) and the hook point (its folder's) of a release
    file laid out as paths.py names it; nothing for another path."""
    location = LOCATION.search(str(path.parent))
    if not (location and "gpt2-small" in str(path) and path.stem.isdigit()):
        return {}
    metadata = {"model": "openai-community/gpt2", "layer": int(path.stem), "hook": location[0]}
    if location[0] in SITES:
        metadata["site"] = SITES[location[0]]
    return metadata
