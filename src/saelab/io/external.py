"""Other libraries' SAE directories, read (and written) through saelab's SAE.

- SAELens: `cfg.json` + `sae_weights.safetensors` (W_enc [d_in, d_sae], b_enc, W_dec [d_sae,
  d_in], b_dec, threshold for jumprelu); architecture standard/relu, topk, jumprelu;
  normalize_activations none or layer_norm (= saelab's per_token).
  With apply_b_dec_to_input = false the encoder does not subtract b_dec; saelab's always does,
  so b_enc absorbs it: b_enc' = b_enc + b_dec @ W_enc (exact).
- EleutherAI sparsify: `cfg.json` (k, d_in, ...) + `sae.safetensors` with encoder.weight
  [d_sae, d_in], encoder.bias, W_dec, b_dec; a TopK SAE on x - b_dec: W_enc = encoder.weight^T.

Each format is a pair of pure translations between its (config dict, tensors) and saelab's
(SAEConfig, tensors), so the same code serves import and export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import ConfigError, SAEConfig
from ..sae.model import SAE
from ..sae.registry import ARCHITECTURES
from .atomic import atomic_write
from .jsonfile import read_json_object
from .format import CFG_NAME, FORMAT, WEIGHTS_NAME, SAEFormatError, export_tensors, load_sae, read_safetensors, sae_from_tensors

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_NORMS = {"none": "none", None: "none", "layer_norm": "per_token"}


def detect_format(path: Path) -> str:
    """"saelab", "saelens" or "sparsify", from the files in an SAE directory."""
    if not path.is_dir():
        raise SAEFormatError(f"no SAE directory at {path}")
    if not (path / CFG_NAME).is_file():
        raise SAEFormatError(f"{path} has no {CFG_NAME}: not an SAE directory of a known format")
    cfg = read_json_object(path / CFG_NAME, SAEFormatError)
    if cfg.get("format") == FORMAT:
        return "saelab"
    if (path / SAELENS_WEIGHTS).is_file():
        return "saelens"
    if (path / WEIGHTS_NAME).is_file():
        return "sparsify"
    files = ", ".join(sorted(p.name for p in path.iterdir()))
    raise SAEFormatError(
        f"{path} is not an SAE directory saelab can read (files: {files}); expected saelab "
        f"(cfg.json with format {FORMAT}), SAELens (cfg.json + {SAELENS_WEIGHTS}) or sparsify "
        f"(cfg.json + {WEIGHTS_NAME} with encoder.weight)"
    )


def load_any(path: str | Path, device: str = "cpu") -> SAE:
    """An SAE from a saelab, SAELens or sparsify directory."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "saelab":
        return load_sae(path, device)
    cfg_dict = read_json_object(path / CFG_NAME, SAEFormatError)
    weights = path / (SAELENS_WEIGHTS if kind == "saelens" else WEIGHTS_NAME)
    tensors = read_safetensors(weights)
    translate = from_saelens if kind == "saelens" else from_sparsify
    try:
        cfg, tensors = translate(cfg_dict, tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise SAEFormatError(f"{path}: cannot read this {kind} SAE: {err}") from None
    cfg.metadata = {**cfg.metadata, "imported_from": kind, "source": str(path)}
    return sae_from_tensors(cfg, tensors, weights).to(device)


# -- SAELens ------------------------------------------------------------------------------------
def from_saelens(cfg: dict, tensors: dict[str, torch.Tensor]) -> tuple[SAEConfig, dict]:
    """The architecture whose saelens_names include cfg["architecture"] reads its tensors."""
    readers = {name: arch for arch in ARCHITECTURES.values() for name in arch.saelens_names}
    arch_name = cfg.get("architecture", "standard")
    if arch_name not in readers:
        raise ConfigError(f"SAELens architecture {arch_name!r} is not supported (supported: {', '.join(readers)})")
    norm = cfg.get("normalize_activations", "none")
    if norm not in SAELENS_NORMS:
        raise ConfigError(f"normalize_activations={norm!r} is not supported (supported: none, layer_norm)")
    arch = readers[arch_name]
    settings, tensors = arch.from_saelens(cfg, {name: t.float() for name, t in tensors.items()})
    if not cfg.get("apply_b_dec_to_input", True):
        if "b_enc" not in tensors:
            raise ConfigError(f"apply_b_dec_to_input=false is not supported for SAELens {arch_name!r} SAEs")
        tensors["b_enc"] = tensors["b_enc"] + tensors["b_dec"] @ tensors["W_enc"]
    sae_cfg = SAEConfig(
        arch=arch.name, d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), input_scaling=SAELENS_NORMS[norm],
        metadata={key: cfg[key] for key in ("model_name", "hook_name", "dataset_path") if key in cfg}, **settings,
    )
    return sae_cfg, tensors


def to_saelens(sae: SAE) -> tuple[dict, dict[str, torch.Tensor]]:
    """The architecture lays its tensors out as SAELens does (batchtopk: a jumprelu with its
    global threshold on every latent)."""
    tensors, cfg = export_tensors(sae)
    fields, tensors = sae.arch.to_saelens(sae, tensors)
    out = {
        **fields, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "layer_norm" if cfg.input_scaling == "per_token" else "none",
    }
    return out, tensors


# -- sparsify -----------------------------------------------------------------------------------
def from_sparsify(cfg: dict, tensors: dict[str, torch.Tensor]) -> tuple[SAEConfig, dict]:
    if "W_skip" in tensors or cfg.get("skip_connection"):
        raise ConfigError("sparsify SAEs with a skip connection are not supported")
    W_enc = tensors["encoder.weight"].float().T.contiguous()
    d_in, d_sae = W_enc.shape
    if "d_in" in cfg and int(cfg["d_in"]) != d_in:
        raise ConfigError(f"cfg.json says d_in={cfg['d_in']} but encoder.weight has d_in={d_in}")
    sae_cfg = SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=int(cfg["k"]), input_scaling="none")
    return sae_cfg, {"W_enc": W_enc, "b_enc": tensors["encoder.bias"].float(),
                     "W_dec": tensors["W_dec"].float(), "b_dec": tensors["b_dec"].float()}


def to_sparsify(sae: SAE) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors, cfg = export_tensors(sae)
    if cfg.arch != "topk" or cfg.input_scaling == "per_token":
        raise ConfigError("sparsify holds TopK SAEs on unnormalised inputs only")
    out = {"k": cfg.k, "d_in": cfg.d_in, "num_latents": cfg.d_sae, "normalize_decoder": True}
    return out, {"encoder.weight": tensors["W_enc"].T.contiguous(), "encoder.bias": tensors["b_enc"],
                 "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]}


def export(sae: SAE, path: str | Path, fmt: str) -> None:
    """Write `sae` as an SAELens or sparsify directory."""
    translate, weights = {"saelens": (to_saelens, SAELENS_WEIGHTS), "sparsify": (to_sparsify, WEIGHTS_NAME)}[fmt]
    cfg, tensors = translate(sae)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / weights, lambda p: save_file(tensors, str(p)))
    atomic_write(path / CFG_NAME, lambda p: p.write_text(json.dumps(cfg, indent=2) + "\n"))
