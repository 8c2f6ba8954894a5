"""Llama Scope (He et al. 2024: fnlp/Llama3_1-8B-Base-LX{R,A,M}-{8,32}x) and Llamascopium
(OpenMOSS's library, formerly lm-saes) SAE directories, read as their own code reads them.

Llama Scope: `hyperparams.json` + `checkpoints/final.safetensors` (bfloat16 encoder.weight
[d_sae, d_in], encoder.bias, decoder.weight [d_in, d_sae], decoder.bias), as lm-saes at the
release (src/lm_saes/sae.py of 2024-11, SparseAutoEncoder.from_config) loads it:
  1. the dataset-wise input scaling folded in (standardize_parameters_of_dataset_activation_
     scaling): f = sqrt(d_model) / dataset_average_activation_norm["in" | "out"];
     b_enc / f_in, b_dec / f_out, W_dec * f_in / f_out;
  2. with sparsity_include_decoder_norm, unit decoder columns (transform_to_unit_decoder_norm):
     n = ||W_dec,i||; W_dec / n, W_enc * n, b_enc * n;
  3. jumprelu with one scalar threshold T: codes = pre * (pre > T); act_fn topk with a
     threshold > 0 is that jumprelu (post_processing.py converted the release so), topk with
     top_k otherwise; the encoder does not subtract b_dec (apply_decoder_bias_to_pre_encoder
     false), so b_enc absorbs b_dec @ W_enc (folds.fold_input_bias).
SAELens 6.54's llama_scope loader gives the same reconstruction; its codes are f_in times these
(it keeps the normalised units) and have the same support where the file's decoder columns have
unit norm.

Llamascopium: `config.json` (sae_type "sae", d_model, expansion_factor, act_fn, norm_activation,
sparsity_include_decoder_norm, top_k, hook_point_in/out) + `sae_weights.safetensors` with W_E
[d_in, d_sae], b_E, W_D [d_sae, d_in], b_D, activation_function.log_jumprelu_threshold [d_sae]
and dataset_average_activation_norm.<hook> (lm_saes of 2025 spells them encoder.weight,
decoder.weight, log_jumprelu_threshold, as SAELens's llama_scope_r1_distill loader reads).
Codes are its SparseAutoEncoder.encode on normalised inputs (models/sae.py): x' = f_in x for
"dataset-wise" (saelab's expected_norm with s = f_in), x for "inference"; pre = x' W_E + b_E; with
sparsity_include_decoder_norm the rule sees pre * n: jumprelu codes = pre * (pre n > θ), saelab's
threshold θ / n; topk selects by relu(pre) n (folded: codes times n, reconstruction exact).
Transcoders (hook_point_out not hook_point_in) load as saelab transcoders, both scales folded
into the weights. Refused by name: other sae_types (crosscoder, clt, lorsa, molt), GLU encoders,
batchtopk (no inference threshold), token- and batch-wise scaling.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import ConfigError
from ..sae.config import SAEConfig
from .folds import fold_decoder_norms, fold_input_bias
from .format import SAEFormatError
from .hooknames import hook_metadata

HYPERPARAMS, LLAMA_SCOPE_WEIGHTS = "hyperparams.json", Path("checkpoints") / "final.safetensors"
CONFIG, WEIGHTS = "config.json", "sae_weights.safetensors"  # Llamascopium
NORM = "dataset_average_activation_norm"
LLAMA_3_1_8B = "meta-llama/Llama-3.1-8B"  # every Llama Scope release (folder Llama3_1-8B-...)


def is_llama_scope(path: Path) -> bool:
    return (path / HYPERPARAMS).is_file() and (path / LLAMA_SCOPE_WEIGHTS).is_file()


def is_llamascopium(path: Path, config: dict) -> bool:
    return (path / WEIGHTS).is_file() and "sae_type" in config


def _check_supported(cfg: dict, library: str, default_norm: str) -> None:
    if cfg.get("sae_type", "sae") != "sae":
        raise ConfigError(
            f"{library} sae_type {cfg['sae_type']!r} is not supported (supported: sae)"
        )
    if _transcodes(cfg) and cfg.get("apply_decoder_bias_to_pre_encoder"):
        raise ConfigError(
            f"a {library} transcoder that subtracts its output bias from its input is not supported"
        )
    if cfg.get("use_glu_encoder"):
        raise ConfigError(f"{library} SAEs with a GLU encoder (use_glu_encoder) are not supported")
    norm = cfg.get("norm_activation", default_norm)
    if norm not in ("dataset-wise", "inference"):
        raise ConfigError(
            f"{library} norm_activation {norm!r} is not supported (supported: dataset-wise, "
            "inference): saelab has no per-token rescaling to norm sqrt(d_model)"
        )


def _transcodes(cfg: dict) -> bool:
    """A transcoder: its output hook point is not its input's."""
    return cfg.get("hook_point_out", cfg.get("hook_point_in")) != cfg.get("hook_point_in")


def _scale(cfg: dict, which: str) -> float:
    """f = sqrt(d_model) / the dataset's average norm at the hook ("in" or "out"), 1 when the
    SAE is in inference mode."""
    if cfg["norm_activation"] != "dataset-wise":
        return 1.0
    norms = cfg[NORM]
    if not isinstance(norms, dict) or not isinstance(norms.get(which), (int, float)):
        raise ConfigError(f"{NORM} must hold numbers 'in' and 'out', got {norms!r}")
    return math.sqrt(cfg["d_model"]) / norms[which]


def _metadata(cfg: dict) -> dict:
    """The model and hook point; a transcoder's output hook too (hook_name_out)."""
    metadata = hook_metadata(cfg.get("model_name"), cfg.get("hook_point_in"))
    if _transcodes(cfg):
        target = hook_metadata(None, cfg.get("hook_point_out"))
        metadata["hook_name_out"] = cfg.get("hook_point_out")
        if "site" in target:
            metadata.update(target_layer=target["layer"], target_site=target["site"])
    return metadata


def from_llama_scope(cfg: dict, tensors: dict) -> tuple[SAEConfig, dict]:
    """(SAEConfig, tensors in saelab's file layout) of a Llama Scope release folder (a field
    it lacks takes lm-saes's default of the time: token-wise scaling, b_dec subtracted)."""
    _check_supported(cfg, "Llama Scope", default_norm="token-wise")
    d_in, transcoder = cfg["d_model"], _transcodes(cfg)
    f_in, f_out = _scale(cfg, "in"), _scale(cfg, "out")
    W_dec = tensors["decoder.weight"].float().T * (f_in / f_out)
    out = {
        "W_enc": tensors["encoder.weight"].float().T,
        "b_enc": tensors["encoder.bias"].float() / f_in,
        "W_dec": W_dec,
        "b_dec": tensors["decoder.bias"].float() / f_out
        if cfg.get("use_decoder_bias", True)
        else torch.zeros(W_dec.shape[1]),
    }
    if cfg.get("sparsity_include_decoder_norm", True):
        out = fold_decoder_norms(out)
    if not transcoder and not cfg.get("apply_decoder_bias_to_pre_encoder", True):
        out = fold_input_bias(out)
    d_sae = out["W_enc"].shape[1]
    act, threshold = cfg.get("act_fn", "relu"), cfg.get("jump_relu_threshold", 0.0)
    if threshold < 0:  # pre * (pre > T) keeps negative codes, which saelab's rule never gives
        raise ConfigError(f"Llama Scope jump_relu_threshold {threshold} < 0 is not supported")
    settings: dict = {}
    if act == "jumprelu" or (act == "topk" and threshold > 0):
        arch, settings["l0_coefficient"] = "jumprelu", 0.0
        out["threshold"] = torch.full((d_sae,), float(threshold))
    elif act in ("topk", "relu"):
        arch = act
        if act == "topk":
            settings["k"] = cfg["top_k"]
    else:
        raise ConfigError(f"Llama Scope act_fn {act!r} is not supported (jumprelu, topk, relu)")
    sae_cfg = SAEConfig(
        arch=arch,
        d_in=d_in,
        d_sae=d_sae,
        input_scaling="none",
        metadata=_metadata(cfg),
        d_out=W_dec.shape[1] if transcoder else None,
        **settings,
    )
    return sae_cfg, out


def from_llamascopium(cfg: dict, tensors: dict) -> tuple[SAEConfig, dict]:
    """(SAEConfig, tensors in saelab's file layout) of a Llamascopium (or 2025 lm_saes)
    directory."""
    _check_supported(cfg, "Llamascopium", default_norm="dataset-wise")
    if "W_E" in tensors:
        W_enc, W_dec = tensors["W_E"].float(), tensors["W_D"].float()
        b_enc, b_dec_name = tensors["b_E"].float(), "b_D"
        log_threshold = "activation_function.log_jumprelu_threshold"
    else:
        W_enc, W_dec = tensors["encoder.weight"].float().T, tensors["decoder.weight"].float().T
        b_enc, b_dec_name = tensors["encoder.bias"].float(), "decoder.bias"
        log_threshold = "log_jumprelu_threshold"
    (d_in, d_sae), transcoder = W_enc.shape, _transcodes(cfg)
    use_bias = cfg.get("use_decoder_bias", True)
    b_dec = tensors[b_dec_name].float() if use_bias else torch.zeros(W_dec.shape[1])
    scale = _dataset_norm_scale(cfg, tensors, d_in, cfg.get("hook_point_in"))
    out = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    n = W_dec.norm(dim=1) if cfg.get("sparsity_include_decoder_norm", True) else torch.ones(d_sae)
    act = cfg.get("act_fn", "relu")
    settings: dict = {}
    if act == "jumprelu":
        settings["l0_coefficient"] = 0.0
        out["threshold"] = tensors[log_threshold].float().exp() / n
    elif act == "topk":
        settings["k"] = cfg.get("top_k", 50)
        if cfg.get("sparsity_include_decoder_norm", True):
            out = fold_decoder_norms(out)
    elif act != "relu":
        raise ConfigError(
            f"Llamascopium act_fn {act!r} is not supported (jumprelu, topk, relu)"
            + ("; its batchtopk has no threshold for inference" if act == "batchtopk" else "")
        )
    if transcoder:  # both scales folded in: x' = f_in x in, y = y' / f_out out
        f_out = _dataset_norm_scale(cfg, tensors, W_dec.shape[1], cfg.get("hook_point_out"))
        out.update(W_enc=out["W_enc"] * scale, W_dec=out["W_dec"] / f_out, b_dec=b_dec / f_out)
        scale = 1.0
    elif not cfg.get("apply_decoder_bias_to_pre_encoder", False):
        out = fold_input_bias(out)
    sae_cfg = SAEConfig(
        arch=act,
        d_in=d_in,
        d_sae=d_sae,
        input_scaling="expected_norm" if scale != 1.0 else "none",
        input_scale=scale,
        metadata=_metadata(cfg),
        d_out=W_dec.shape[1] if transcoder else None,
        **settings,
    )
    return sae_cfg, out


def _dataset_norm_scale(cfg: dict, tensors: dict, d: int, hook: str | None) -> float:
    """sqrt(d) / the average norm at `hook` of a dataset-wise Llamascopium SAE, from its weights
    file's dataset_average_activation_norm.<hook> (every such scalar counts as read)."""
    norms = {key[len(NORM) + 1 :]: tensors[key] for key in tensors if key.startswith(NORM + ".")}
    if cfg.get("norm_activation", "dataset-wise") != "dataset-wise":
        return 1.0
    if hook not in norms:
        raise SAEFormatError(
            f"a dataset-wise Llamascopium SAE needs tensor {NORM}.{hook} (the average input "
            f"norm it was trained with); the file has {', '.join(norms) or 'none'}"
        )
    norm = float(norms[hook])
    if not (math.isfinite(norm) and norm > 0):
        raise SAEFormatError(f"{NORM}.{hook} is {norm}: not a positive number")
    return math.sqrt(d) / norm
