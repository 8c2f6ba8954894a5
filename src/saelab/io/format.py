"""The SAE directory: `cfg.json` + `sae.safetensors`, the SAE's whole state dict (W_enc
[d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] and each architecture's own
tensors, in its file layout: a jumprelu's `threshold` [d_sae], a batchtopk's `threshold` [];
a transcoder's W_dec [d_sae, d_out], b_dec [d_out], W_skip [d_in, d_out], d_out and skip in
cfg.json),
so a new architecture's tensors round-trip with no change here. The input scale lives in
cfg.json, not in the file. Weights beyond MAX_FILE_BYTES (a dictionary of 2^20 latents on a
4096-wide model holds 34 GB) go to several files and an index, in transformers' layout.

`expected_norm` scaling is folded into the weights on save, so a saved SAE works on raw
activations with identical codes: W_enc *= s, W_dec /= s, b_dec /= s (thresholds stay in
pre-activation units), and cfg.json records s as metadata.folded_input_scale. A transcoder's
output has its own s_out: W_dec /= s_out, b_dec /= s_out, W_skip *= s / s_out, recorded as
metadata.folded_output_scale. Loading unfolds them again (unit-norm decoder rows, input_scale
= s), so a loaded SAE trains on like the one that was saved; other libraries' readers see the
folded tensors. Loading never unpickles: only safetensors is read.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import rundir
from ..errors import ConfigError, SaelabError
from ..sae.config import SAEConfig
from ..version import __version__
from .atomic import atomic_write
from .jsonfile import check_fields, read_json_object

if TYPE_CHECKING:
    from ..sae.model import SAE

CFG_NAME, WEIGHTS_NAME = rundir.CFG, rundir.WEIGHTS
# weights larger than this are split over several files with an index, as transformers does
# (sae-00001-of-00003.safetensors ... + sae.safetensors.index.json)
MAX_FILE_BYTES = 5 * 2**30
WEIGHTS_PATTERN = WEIGHTS_NAME.replace(".safetensors", "{suffix}.safetensors")
WEIGHTS_INDEX = WEIGHTS_NAME + ".index.json"
SCALES = ("input_scale", "output_scale")  # buffers recorded in cfg.json, not in the file
FORMAT = rundir.SAE_FORMAT
FORMAT_VERSION = 2  # 1 (no format_version): cfg.json held every architecture's settings


class SAEFormatError(SaelabError, ValueError):
    """An SAE directory is missing, incomplete, corrupt or inconsistent."""


def file_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    """The state dict in the architecture's file layout, without the input scale (in cfg.json)."""
    state = {name: t.detach() for name, t in sae.state_dict().items() if name not in SCALES}
    return sae.arch.to_file(state)


def folded(tensors: dict[str, torch.Tensor], s: float, s_out: float) -> dict[str, torch.Tensor]:
    """The tensors of an SAE with input scale s and output scale s_out (an autoencoder's s_out
    is s) as the same map on unscaled inputs: W_enc * s, W_dec / s_out, b_dec / s_out,
    W_skip * s / s_out. Unfolding is folded(tensors, 1 / s, 1 / s_out)."""
    out = dict(tensors)
    out.update(W_enc=out["W_enc"] * s, W_dec=out["W_dec"] / s_out, b_dec=out["b_dec"] / s_out)
    if "W_skip" in out:
        out["W_skip"] = out["W_skip"] * (s / s_out)
    return out


def export_tensors(sae: SAE) -> tuple[dict[str, torch.Tensor], SAEConfig]:
    """The tensors and config as written to disk, with the input (and output) scale folded in."""
    cfg = SAEConfig.from_dict(sae.cfg.to_dict())
    s = float(sae.input_scale)
    s_out = float(sae.output_scale) if cfg.is_transcoder else s
    tensors = folded(file_tensors(sae), s, s_out)
    if cfg.input_scaling == "expected_norm":
        scales = {"folded_input_scale": s}
        if cfg.is_transcoder:
            scales["folded_output_scale"] = s_out
        cfg.metadata = {
            **cfg.metadata,
            **{key: cfg.metadata.get(key, 1.0) * value for key, value in scales.items()},
        }
    cfg.input_scale = 1.0
    if cfg.is_transcoder:
        cfg.output_scale = 1.0
    return {
        name: (t.float() if t.is_floating_point() else t).contiguous().cpu()
        for name, t in tensors.items()
    }, cfg


def save_sae(sae: SAE, path: str | Path) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors, cfg = export_tensors(sae)
    cfg_json = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "saelab_version": __version__,
        **cfg.to_dict(),
    }
    write_weights(path, tensors)
    atomic_write(path / CFG_NAME, lambda p: p.write_text(json.dumps(cfg_json, indent=2) + "\n"))


def write_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """sae.safetensors, or, beyond MAX_FILE_BYTES, the files huggingface_hub's split names and
    then their index (written last: a reader sees a whole set or the one before)."""
    split = split_torch_state_dict_into_shards(
        tensors, filename_pattern=WEIGHTS_PATTERN, max_shard_size=MAX_FILE_BYTES
    )
    if not split.is_sharded:
        atomic_write(path / WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
        (path / WEIGHTS_INDEX).unlink(missing_ok=True)
        return
    for filename, names in split.filename_to_tensors.items():
        part = {name: tensors[name].contiguous() for name in names}
        atomic_write(path / filename, lambda p, part=part: save_file(part, str(p)))
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    atomic_write(path / WEIGHTS_INDEX, lambda p: p.write_text(json.dumps(index, indent=2)))
    (path / WEIGHTS_NAME).unlink(missing_ok=True)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an SAE directory: sae.safetensors, or the files its index names."""
    index_file = path / WEIGHTS_INDEX
    if (path / WEIGHTS_NAME).is_file() or not index_file.is_file():
        return read_safetensors(path / WEIGHTS_NAME)
    weight_map = read_json_object(index_file, SAEFormatError).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(f, str) and Path(f).name == f for f in weight_map.values()
    ):
        raise SAEFormatError(f"{index_file}: weight_map must map tensor names to file names")
    tensors = {}
    for filename in sorted(set(weight_map.values())):
        tensors.update(read_safetensors(path / filename))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise SAEFormatError(f"{index_file} names tensors its files lack: {', '.join(missing)}")
    return tensors


def _check_safetensors_header(file: Path) -> None:
    """Refuse anything that is not a safetensors file before a parser sees it: a safetensors
    file starts with its header's length (8 bytes, little-endian) and then the JSON header. (A
    length whose low byte is 0x80 also starts like a pickle, so the header is checked first.)"""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
        return
    if head[:2] == b"PK" or head[:1] == b"\x80":
        raise SAEFormatError(
            f"{file} is a pickle/torch.save file, not safetensors; refusing to load it "
            "(unpickling a stranger's file can run arbitrary code)"
        )
    raise SAEFormatError(f"{file} is not a valid safetensors file (truncated or corrupt header)")


def read_config(path: Path) -> SAEConfig:
    cfg_file = path / CFG_NAME
    if not cfg_file.is_file():
        raise SAEFormatError(rundir.not_an_sae(path))
    raw = read_json_object(cfg_file, SAEFormatError)
    if raw.pop("format", None) != FORMAT:
        raise SAEFormatError(
            f'{cfg_file} is not a saelab SAE config (missing "format": "{FORMAT}")'
        )
    raw.pop("saelab_version", None)
    check_fields(
        raw, str(cfg_file), SAEFormatError, optional=("format_version",), format_version=int
    )
    version = raw.pop("format_version", 1)
    if not 1 <= version <= FORMAT_VERSION:
        raise SAEFormatError(
            f"{cfg_file} has format_version {version}; this saelab ({__version__}) reads versions "
            f"1 to {FORMAT_VERSION}: upgrade saelab to read it"
        )
    legacy = version < FORMAT_VERSION
    try:
        return SAEConfig.from_dict(raw, legacy=legacy)
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


def check_sizes(tensors: dict[str, torch.Tensor], cfg: SAEConfig, file: Path) -> None:
    """W_enc [d_in, d_sae] and W_dec [d_sae, d_in] (a transcoder's [d_sae, d_out]) in the file
    agree with the config, checked before an SAE of the config's size is allocated."""
    want = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.width_out)}
    for name, shape in want.items():
        if name not in tensors:
            raise SAEFormatError(f"{file} has no tensor {name} (expected shape {shape})")
        if tuple(tensors[name].shape) != shape:
            raise SAEFormatError(
                f"{file}: tensor {name} has shape {tuple(tensors[name].shape)}, but the config "
                f"(d_in={cfg.d_in}, d_sae={cfg.d_sae}"
                + (f", d_out={cfg.d_out}" if cfg.is_transcoder else "")
                + f") needs {shape}"
            )


def check_tensors(tensors: dict[str, torch.Tensor], sae: SAE, file: Path) -> None:
    """Names, shapes, dtypes and finiteness of file-layout tensors against a fresh SAE of the
    same config; tensors the architecture lists as optional (training state that older files
    lack) may be missing."""
    want = file_tensors(sae)
    missing = sorted(set(want) - set(tensors) - set(sae.arch.optional_in_file))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise SAEFormatError(
            f"{file} does not match cfg.json (arch={sae.cfg.arch}): missing {missing or 'none'}, "
            f"unexpected {extra or 'none'}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(want[name].shape):
            raise SAEFormatError(
                f"{file}: tensor {name} has shape {tuple(tensor.shape)}, but cfg.json "
                f"(d_in={sae.cfg.d_in}, d_sae={sae.cfg.d_sae}) needs {tuple(want[name].shape)}"
            )
        if tensor.is_floating_point() != want[name].is_floating_point():
            raise SAEFormatError(
                f"{file}: tensor {name} has dtype {tensor.dtype}, expected {want[name].dtype}"
            )
        if (
            tensor.is_floating_point()
            and name not in sae.arch.unset_when_nan
            and not torch.isfinite(tensor).all()
        ):
            raise SAEFormatError(f"{file}: tensor {name} contains NaN or Inf")
