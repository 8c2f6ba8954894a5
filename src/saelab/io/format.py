"""The SAE directory: `cfg.json` + `sae.safetensors` (W_enc [d_in, d_sae], b_enc [d_sae],
W_dec [d_sae, d_in], b_dec [d_in], threshold [d_sae] for jumprelu or [] for batchtopk).

`expected_norm` scaling is folded into the weights on save, so a saved SAE works on raw
activations with identical codes: W_enc *= s, W_dec /= s, b_dec /= s (thresholds stay in
pre-activation units), and cfg.json records s as metadata.folded_input_scale. Loading unfolds
it again (unit-norm decoder rows, input_scale = s), so a loaded SAE trains on like the one that
was saved; other libraries' readers see the folded tensors. Loading never unpickles: only
safetensors is read.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..config import ConfigError, SAEConfig
from ..errors import SaelabError
from ..sae.model import SAE
from .atomic import atomic_write
from .jsonfile import read_json_object

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae.safetensors"
FORMAT = "saelab-sae"


class SAEFormatError(SaelabError, ValueError):
    """An SAE directory is missing, incomplete, corrupt or inconsistent."""


def expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    shapes = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    if cfg.arch == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    if cfg.arch == "batchtopk":
        shapes["threshold"] = ()
    return shapes


def export_tensors(sae: SAE) -> tuple[dict[str, torch.Tensor], SAEConfig]:
    """The tensors and config as written to disk, with the input scale folded in."""
    cfg = SAEConfig.from_dict(sae.cfg.to_dict())
    s = float(sae.input_scale)
    tensors = {
        "W_enc": sae.W_enc.detach() * s,
        "b_enc": sae.b_enc.detach().clone(),
        "W_dec": sae.W_dec.detach() / s,
        "b_dec": sae.b_dec.detach() / s,
    }
    if cfg.arch == "jumprelu":
        tensors["threshold"] = sae.log_threshold.detach().exp()
    if cfg.arch == "batchtopk":
        tensors["threshold"] = sae.threshold.detach().clone()
    if cfg.input_scaling == "expected_norm":
        cfg.metadata = {**cfg.metadata, "folded_input_scale": cfg.metadata.get("folded_input_scale", 1.0) * s}
    cfg.input_scale = 1.0
    return {name: t.float().contiguous().cpu() for name, t in tensors.items()}, cfg


def save_sae(sae: SAE, path: str | Path) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors, cfg = export_tensors(sae)
    cfg_json = {"format": FORMAT, "saelab_version": __version__, **cfg.to_dict()}
    atomic_write(path / WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
    atomic_write(path / CFG_NAME, lambda p: p.write_text(json.dumps(cfg_json, indent=2) + "\n"))


def _check_safetensors_header(file: Path) -> None:
    """Refuse anything that is not a safetensors file before a parser sees it."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(9)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise SAEFormatError(
            f"{file} is a pickle/torch.save file, not safetensors; refusing to load it "
            "(unpickling a stranger's file can run arbitrary code)"
        )
    if len(head) < 9 or head[8:9] != b"{" or struct.unpack("<Q", head[:8])[0] > size - 8:
        raise SAEFormatError(f"{file} is not a valid safetensors file (truncated or corrupt header)")


def read_config(path: Path) -> SAEConfig:
    cfg_file = path / CFG_NAME
    if not cfg_file.is_file():
        raise SAEFormatError(f"{path} has no {CFG_NAME}")
    raw = read_json_object(cfg_file, SAEFormatError)
    if raw.pop("format", None) != FORMAT:
        raise SAEFormatError(f"{cfg_file} is not a saelab SAE config (missing \"format\": \"{FORMAT}\")")
    raw.pop("saelab_version", None)
    try:
        return SAEConfig.from_dict(raw)
    except (ConfigError, TypeError) as err:
        raise SAEFormatError(f"{cfg_file}: {err}") from None


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, refusing pickles and damaged files."""
    if not file.is_file():
        raise SAEFormatError(f"{file.parent} has no {file.name}")
    _check_safetensors_header(file)
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise SAEFormatError(f"{file} is corrupt or truncated: {err}") from None


def check_tensors(tensors: dict[str, torch.Tensor], cfg: SAEConfig, file: Path) -> None:
    """Names, shapes, dtypes and finiteness of saelab-named tensors against cfg."""
    want = expected_shapes(cfg)
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise SAEFormatError(
            f"{file} does not match cfg.json (arch={cfg.arch}): missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}"
        )
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise SAEFormatError(
                f"{file}: tensor {name} has shape {tuple(tensors[name].shape)}, but cfg.json "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}) needs {shape}"
            )
        if not tensors[name].is_floating_point():
            raise SAEFormatError(f"{file}: tensor {name} has dtype {tensors[name].dtype}, expected float")
        unset_threshold = cfg.arch == "batchtopk" and name == "threshold"
        if not unset_threshold and not torch.isfinite(tensors[name]).all():
            raise SAEFormatError(f"{file}: tensor {name} contains NaN or Inf")


def sae_from_tensors(cfg: SAEConfig, tensors: dict[str, torch.Tensor], path: Path) -> SAE:
    """An SAE in eval mode from saelab-named tensors (checked against cfg first)."""
    check_tensors(tensors, cfg, path)
    folded = float(cfg.metadata.get("folded_input_scale", 1.0)) if cfg.input_scaling == "expected_norm" else 1.0
    if not (math.isfinite(folded) and folded > 0):
        raise SAEFormatError(f"{path}: metadata.folded_input_scale must be a positive number, got {folded}")
    if folded != 1.0:  # unfold: W_enc /= s, W_dec *= s, b_dec *= s, input_scale = s
        tensors = {**tensors, "W_enc": tensors["W_enc"] / folded, "W_dec": tensors["W_dec"] * folded,
                   "b_dec": tensors["b_dec"] * folded}
        metadata = {key: value for key, value in cfg.metadata.items() if key != "folded_input_scale"}
        cfg = SAEConfig.from_dict({**cfg.to_dict(), "input_scale": folded, "metadata": metadata})
    sae = SAE(cfg)
    sae.initialized = True
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(tensors[name])
        if cfg.arch == "jumprelu":
            if (tensors["threshold"] <= 0).any():
                raise SAEFormatError(f"{path}: jumprelu thresholds must be positive")
            sae.log_threshold.copy_(tensors["threshold"].log())
        if cfg.arch == "batchtopk":
            sae.threshold.copy_(tensors["threshold"])
    return sae.eval()


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SAE:
    path = Path(path)
    if not path.is_dir():
        raise SAEFormatError(f"no SAE directory at {path}")
    cfg = read_config(path)
    return sae_from_tensors(cfg, read_safetensors(path / WEIGHTS_NAME), path / WEIGHTS_NAME).to(device)
