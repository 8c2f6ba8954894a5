"""Other libraries' SAE directories, read (and written) through saelab's SAE.

- SAELens: `cfg.json` + `sae_weights.safetensors` (W_enc [d_in, d_sae], b_enc, W_dec [d_sae,
  d_in], b_dec, threshold for jumprelu); architecture standard/relu, topk, jumprelu;
  normalize_activations none or layer_norm (= saelab's per_token).
  With apply_b_dec_to_input = false the encoder does not subtract b_dec; saelab's always does,
  so the encoder biases absorb it exactly (fold_input_bias).
- EleutherAI sparsify: `cfg.json` (k, d_in, ...) + `sae.safetensors` with encoder.weight
  [d_sae, d_in], encoder.bias, W_dec, b_dec; a TopK SAE on x - b_dec: W_enc = encoder.weight^T;
  transcoders (transcode, skip_connection: W_skip [d_out, d_in]) both ways.
- Gemma Scope: `params.npz` (io/gemma_scope.py: a JumpReLU SAE without b_dec subtraction).
- Llama Scope and Llamascopium (io/llama_scope.py); OpenAI's sparse_autoencoder, one .pt file
  (io/openai.py).
- dictionary_learning: `config.json` + `ae.pt` (io/dictionary_learning.py: relu, topk,
  batchtopk, matryoshka, jumprelu, gated; ae.pt read with torch.load(weights_only=True)).

Each format is a pair of pure translations between its (config dict, tensors) and saelab's
(SAEConfig, tensors), so the same code serves import and export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from .. import rundir
from ..errors import ConfigError
from ..sae.config import SAEConfig
from ..sae.registry import ARCHITECTURES
from . import dictionary_learning, gemma_scope, llama_scope, openai
from .atomic import atomic_write
from .folds import fold_decoder_norms, fold_input_bias
from .format import (
    CFG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    SAEFormatError,
    export_tensors,
    read_config,
    read_safetensors,
)
from .hooknames import hook_metadata
from .jsonfile import is_kind, read_json_object

if TYPE_CHECKING:
    from ..sae.model import SAE

SAELENS_WEIGHTS = rundir.SAELENS_WEIGHTS
SAELENS_NORMS = {
    "none": "none",
    None: "none",
    "layer_norm": "per_token",
    "expected_average_only_in": "none",  # nothing at run time in SAELens (saelens_metadata)
}


def detect_format(path: Path) -> str:
    """ "saelab", "saelens", "sparsify", "dictionary_learning", "gemma_scope", "llama_scope",
    "llamascopium" or "openai", from the files in an SAE directory (an OpenAI SAE is one .pt
    file)."""
    if path.is_file() and path.suffix == openai.SUFFIX:
        return "openai"
    if not path.is_dir():
        raise SAEFormatError(
            f"{path} is a file, not an SAE directory (or an OpenAI {openai.SUFFIX} file)"
            if path.exists()
            else f"no SAE directory at {path}"
        )
    if gemma_scope.params_file(path):
        return "gemma_scope"
    if llama_scope.is_llama_scope(path):
        return "llama_scope"
    config = path / llama_scope.CONFIG
    if config.is_file() and llama_scope.is_llamascopium(
        path, read_json_object(config, SAEFormatError)
    ):
        return "llamascopium"
    if (path / dictionary_learning.WEIGHTS).is_file():
        if not (path / dictionary_learning.CONFIG).is_file():
            raise SAEFormatError(
                f"{path} has {dictionary_learning.WEIGHTS} but no {dictionary_learning.CONFIG}: "
                "a dictionary_learning SAE needs both"
            )
        return "dictionary_learning"
    if not (path / CFG_NAME).is_file():
        raise SAEFormatError(rundir.not_an_sae(path))
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
        f"(cfg.json with format {FORMAT}), SAELens (cfg.json + {SAELENS_WEIGHTS}), sparsify "
        f"(cfg.json + {WEIGHTS_NAME} with encoder.weight), dictionary_learning (config.json + "
        f"ae.pt), Gemma Scope ({gemma_scope.PARAMS} or {gemma_scope.PARAMS_2}), Llama Scope "
        f"({llama_scope.HYPERPARAMS} + {llama_scope.LLAMA_SCOPE_WEIGHTS}), Llamascopium "
        f"(config.json with sae_type + {llama_scope.WEIGHTS}) or an OpenAI .pt file"
    )


# what a valid directory of each layout holds, for errors about a missing field or tensor
LAYOUTS = {
    "saelens": (
        "d_in, d_sae, architecture (standard, topk, jumprelu, gated) and normalize_activations",
        "W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in] (jumprelu also "
        "threshold [d_sae]; gated b_gate, r_mag, b_mag instead of b_enc; transcoders W_dec "
        "[d_sae, d_out], b_dec [d_out], skip transcoders W_skip [d_out, d_in])",
    ),
    "sparsify": (
        "k, d_in and num_latents",
        "encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in], b_dec [d_in]",
    ),
    "gemma_scope": (
        "nothing (the folder names give the model, layer and hook)",
        "W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold "
        "[d_sae] (float32; w_enc, w_dec also read; Gemma Scope 2: params.safetensors)",
    ),
    "llama_scope": (
        "d_model, hook_point_in, act_fn, jump_relu_threshold, norm_activation and "
        "dataset_average_activation_norm {in, out}",
        "encoder.weight [d_sae, d_in], encoder.bias [d_sae], decoder.weight [d_in, d_sae], "
        "decoder.bias [d_in]",
    ),
    "llamascopium": (
        "sae_type, d_model, hook_point_in, act_fn, norm_activation, top_k",
        "W_E [d_in, d_sae], b_E [d_sae], W_D [d_sae, d_in], b_D [d_in], "
        "activation_function.log_jumprelu_threshold [d_sae] (jumprelu) and "
        "dataset_average_activation_norm.<hook_point_in> (dataset-wise); or encoder.weight, "
        "encoder.bias, decoder.weight, decoder.bias, log_jumprelu_threshold",
    ),
    "openai": (
        "activation (TopK or ReLU) and activation_state_dict.k in the state dict",
        "encoder.weight [d_sae, d_in], latent_bias [d_sae], decoder.weight [d_in, d_sae], "
        "pre_bias [d_in]",
    ),
    "dictionary_learning": (
        "trainer: dict_class, activation_dim, dict_size (and k for top-k classes)",
        "encoder.weight [d_sae, d_in], encoder.bias [d_sae], decoder.weight [d_in, d_sae] and "
        "b_dec [d_in] or bias (as the dict_class lays them out)",
    ),
}


class Entries(dict):
    """The fields of a config or the tensors of a weights file. Reading one that is missing is
    an SAEFormatError naming the file, the entry and what a file of its layout holds."""

    def __init__(self, values: dict, file: Path, what: str, layout: str):
        super().__init__(values)
        self.file, self.what, self.layout = file, what, layout
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def unread(self) -> list[str]:
        """The entries no reader asked for."""
        return sorted(set(self) - self.read)

    def __missing__(self, key):
        raise SAEFormatError(
            f"{self.file} has no {self.what} {key!r}; it should hold {self.layout}"
        )


def integer(values: dict, name: str) -> int:
    """values[name], which must be an integer (a config field of another library)."""
    value = values[name]
    if not is_kind(value, int):
        where = getattr(values, "file", "the config")
        raise SAEFormatError(f"{where}: field {name!r} must be an integer, got {value!r}")
    return value


def read_any(path: str | Path) -> tuple[SAEConfig, dict[str, torch.Tensor], Path]:
    """(config, tensors in saelab's file layout, the weights file) of an SAE in any layout
    detect_format knows; SAE.load_any builds the SAE."""
    path = Path(path)
    kind = detect_format(path)
    if kind == "saelab":
        return read_config(path), read_safetensors(path / WEIGHTS_NAME), path / WEIGHTS_NAME
    cfg_file, cfg_dict, weights, tensors = _read_files(kind, path)
    fields, names = LAYOUTS[kind]
    cfg_dict = Entries(cfg_dict, cfg_file, "field", fields)
    tensors = Entries(tensors, weights, "tensor", names)
    translate = {
        "saelens": from_saelens,
        "sparsify": from_sparsify,
        "dictionary_learning": dictionary_learning.from_dictionary_learning,
        "gemma_scope": gemma_scope.from_gemma_scope,
        "llama_scope": llama_scope.from_llama_scope,
        "llamascopium": llama_scope.from_llamascopium,
        "openai": openai.from_openai,
    }[kind]
    try:
        cfg, out = translate(cfg_dict, tensors)
    except SAEFormatError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise SAEFormatError(f"{path}: cannot read this {kind} SAE: {err}") from None
    _check_all_read(tensors, weights, kind, cfg.arch)
    cfg.metadata = {**cfg.metadata, "imported_from": kind, "source": str(path)}
    return cfg, out, weights


def _read_files(kind: str, path: Path) -> tuple[Path, dict, Path, dict[str, torch.Tensor]]:
    """(config file, its fields, weights file, its tensors) of another library's SAE."""
    if kind == "gemma_scope":
        cfg_file = weights = gemma_scope.params_file(path)
        try:
            cfg_dict = gemma_scope.config_from_path(path)
        except ConfigError as err:
            raise SAEFormatError(str(err)) from None
        return cfg_file, cfg_dict, weights, gemma_scope.read_params(weights)
    if kind == "openai":
        cfg_dict, tensors = openai.read_state_dict(path)
        return path, cfg_dict, path, tensors
    cfg_name, weights_name = {
        "dictionary_learning": (dictionary_learning.CONFIG, dictionary_learning.WEIGHTS),
        "llama_scope": (llama_scope.HYPERPARAMS, llama_scope.LLAMA_SCOPE_WEIGHTS),
        "llamascopium": (llama_scope.CONFIG, llama_scope.WEIGHTS),
        "saelens": (CFG_NAME, SAELENS_WEIGHTS),
        "sparsify": (CFG_NAME, WEIGHTS_NAME),
    }[kind]
    cfg_file, weights = path / cfg_name, path / weights_name
    cfg_dict = read_json_object(cfg_file, SAEFormatError)
    if kind == "dictionary_learning":
        cfg_dict = cfg_dict.get("trainer", cfg_dict)
        if not isinstance(cfg_dict, dict):
            raise SAEFormatError(f"{cfg_file}: 'trainer' must be a JSON object")
        return cfg_file, cfg_dict, weights, dictionary_learning.read_state_dict(weights)
    if kind == "llama_scope" and "Llama3_1-8B" in str(path.resolve()):
        cfg_dict.setdefault("model_name", llama_scope.LLAMA_3_1_8B)
    return cfg_file, cfg_dict, weights, read_safetensors(weights)


def _check_all_read(tensors: Entries, weights: Path, kind: str, arch: str) -> None:
    """Every tensor of the file was used (or changes nothing when dropped)."""
    unknown = [name for name in tensors.unread() if not _identity(name, tensors[name])]
    if unknown:
        raise SAEFormatError(
            f"{weights} holds tensor(s) saelab does not understand for a {kind} {arch} SAE: "
            f"{', '.join(unknown)}; refusing to drop them (the SAE would not be the one saved)"
        )


def _identity(name: str, tensor: torch.Tensor) -> bool:
    """A tensor that changes nothing when dropped: SAELens's legacy finetuning scaling_factor
    of ones."""
    return name == "scaling_factor" and bool((tensor == 1).all())


# -- SAELens ------------------------------------------------------------------------------------
def saelens_6(cfg: dict) -> dict:
    """cfg in SAELens 6's terms. A config written before SAELens 6 (no sae_lens_version, at the
    top or in metadata, or one below 6) is read as SAELens 6.54 reads it
    (loading/pretrained_sae_loaders.py, handle_pre_6_0_config): activation_fn_str is
    activation_fn, hook_point is hook_name, architecture defaults to standard and is topk when
    activation_fn is topk with activation_fn_kwargs.k, and a boolean normalize_activations is
    none (false) or expected_average_only_in (true)."""
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if version and _major(version) >= 6:
        return cfg
    renames = {"activation_fn_str": "activation_fn", "hook_point": "hook_name"}
    new = {renames.get(key, key): value for key, value in cfg.items()}
    new.setdefault("architecture", "standard")
    kwargs = new.get("activation_fn_kwargs") or {}
    if new.get("activation_fn") == "topk" and kwargs.get("k") is not None:
        new["architecture"], new["k"] = "topk", kwargs["k"]
    norm = new.get("normalize_activations")
    if isinstance(norm, bool):
        new["normalize_activations"] = "expected_average_only_in" if norm else "none"
    return Entries(new, cfg.file, cfg.what, cfg.layout) if isinstance(cfg, Entries) else new


def _major(version) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ConfigError(f"sae_lens_version {version!r} is not a version number") from None


# SAELens's transcoders: (the SAE architecture of their rule, whether a skip path W_skip
# [d_out, d_in], applied as x @ W_skip^T, is added); their encoders never subtract b_dec
SAELENS_TRANSCODERS = {
    "transcoder": ("standard", False),
    "skip_transcoder": ("standard", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}


def from_saelens(cfg: dict, tensors: dict[str, torch.Tensor]) -> tuple[SAEConfig, dict]:
    """The architecture whose saelens_names include cfg["architecture"] reads its tensors (a
    transcoder's: that of its rule, SAELENS_TRANSCODERS)."""
    cfg = saelens_6(cfg)
    readers = {name: arch for arch in ARCHITECTURES.values() for name in arch.saelens_names}
    transcoder = SAELENS_TRANSCODERS.get(cfg.get("architecture"))
    arch_name = transcoder[0] if transcoder else cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", "topk" if arch_name == "topk" else "relu")
    if activation not in ("relu", "topk") or (activation == "topk") != (arch_name == "topk"):
        raise ConfigError(
            f"SAELens activation_fn {activation!r} with architecture {arch_name!r} is not "
            "supported (supported: relu with standard, jumprelu or gated; topk with topk)"
        )
    if arch_name not in readers:
        raise ConfigError(
            f"SAELens architecture {arch_name!r} is not supported (supported: {', '.join(readers)})"
        )
    norm = cfg.get("normalize_activations", "none")
    if norm not in SAELENS_NORMS:
        raise ConfigError(
            f"normalize_activations={norm!r} is not supported (supported: none, layer_norm, "
            "expected_average_only_in)"
        )
    arch = readers[arch_name]
    source, (settings, tensors) = tensors, arch.from_saelens(cfg, tensors)
    tensors = {name: t.float() for name, t in tensors.items()}
    if transcoder and transcoder[1]:
        tensors["W_skip"] = source["W_skip"].float().T.contiguous()
    if cfg.get("rescale_acts_by_decoder_norm"):
        if arch.name != "topk":
            raise ConfigError(
                f"rescale_acts_by_decoder_norm is supported for SAELens topk SAEs, not {arch_name}"
            )
        tensors = fold_decoder_norms(tensors)
    if not transcoder and not cfg.get("apply_b_dec_to_input", True):
        tensors = fold_input_bias(tensors)
    sae_cfg = SAEConfig(
        arch=arch.name,
        d_in=integer(cfg, "d_in"),
        d_sae=integer(cfg, "d_sae"),
        input_scaling=SAELENS_NORMS[norm],
        metadata=saelens_metadata(cfg),
        d_out=integer(cfg, "d_out") if transcoder else None,
        skip=bool(transcoder and transcoder[1]),
        **settings,
    )
    return sae_cfg, tensors


def saelens_metadata(cfg: dict) -> dict:
    """model_name, hook_name and dataset_path, at the top (before SAELens 6) or in metadata
    (SAELens 6), plus saelab's model, layer and site where the hook name is one of saelab's
    hook points (blocks.L.hook_SITE), so `saelab eval DIR` knows where to run; and how SAELens
    normalised the input when saelab reads it as none."""
    found = {**cfg, **(cfg.get("metadata") or {})}
    metadata = hook_metadata(found.get("model_name"), found.get("hook_name"))
    out = hook_metadata(None, found.get("hook_name_out"))  # a transcoder's target
    if "site" in out:
        metadata.update(hook_name_out=out["hook_name"], target_layer=out["layer"])
        metadata["target_site"] = out["site"]
    if found.get("dataset_path") is not None:
        metadata["dataset_path"] = found["dataset_path"]
    if cfg.get("normalize_activations") == "expected_average_only_in":
        # SAELens applies nothing at run time for it (saes/sae.py); a release's factor is folded
        # in only when SAELens loads it from its registry
        metadata["saelens_normalize_activations"] = "expected_average_only_in"
    return metadata


def to_saelens(sae: SAE) -> tuple[dict, dict[str, torch.Tensor]]:
    """The architecture lays its tensors out as SAELens does (batchtopk: a jumprelu with its
    global threshold on every latent)."""
    tensors, cfg = export_tensors(sae)
    skip = tensors.pop("W_skip", None)
    fields, tensors = sae.arch.to_saelens(sae, tensors)
    out = {
        **fields,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": not cfg.is_transcoder,
        "normalize_activations": "layer_norm" if cfg.input_scaling == "per_token" else "none",
    }
    if cfg.is_transcoder:
        names = {rule: name for name, rule in SAELENS_TRANSCODERS.items()}
        if (fields["architecture"], cfg.skip) not in names:
            raise ConfigError(
                f"SAELens has no {fields['architecture']} transcoder (it has relu and jumprelu "
                "transcoders)"
            )
        out.update(architecture=names[fields["architecture"], cfg.skip], d_out=cfg.d_out)
        if skip is not None:
            tensors["W_skip"] = skip.T.contiguous()
    meta = cfg.metadata
    if meta.get("model") and meta.get("layer") is not None and meta.get("site"):
        out.update(
            model_name=meta["model"], hook_name=f"blocks.{meta['layer']}.hook_{meta['site']}"
        )
    if meta.get("target_layer") is not None and meta.get("target_site"):
        out["hook_name_out"] = f"blocks.{meta['target_layer']}.hook_{meta['target_site']}"
    return out, tensors


# -- sparsify -----------------------------------------------------------------------------------
def from_sparsify(cfg: dict, tensors: dict[str, torch.Tensor]) -> tuple[SAEConfig, dict]:
    """A sparsify TopK SAE, or transcoder (transcode: true, its encoder without the b_dec
    shift; with skip_connection its W_skip [d_out, d_in], applied as x @ W_skip^T: saelab's
    W_skip is its transpose). Refused by name: a skip connection on an autoencoder, and
    activations other than topk (groupmax)."""
    transcoder = bool(cfg.get("transcode"))
    skip = "W_skip" in tensors or bool(cfg.get("skip_connection"))
    if skip and not transcoder:
        raise ConfigError("sparsify autoencoders with a skip connection are not supported")
    if cfg.get("activation", "topk") != "topk":
        raise ConfigError(
            f"sparsify activation {cfg['activation']!r} is not supported (supported: topk); "
            "reading it as topk would give other codes"
        )
    W_enc = tensors["encoder.weight"].float().T.contiguous()
    d_in, d_sae = W_enc.shape
    if "d_in" in cfg and integer(cfg, "d_in") != d_in:
        raise ConfigError(f"cfg.json says d_in={cfg['d_in']} but encoder.weight has d_in={d_in}")
    out = {
        "W_enc": W_enc,
        "b_enc": tensors["encoder.bias"].float(),
        "W_dec": tensors["W_dec"].float(),
        "b_dec": tensors["b_dec"].float(),
    }
    if skip:
        out["W_skip"] = tensors["W_skip"].float().T.contiguous()
    sae_cfg = SAEConfig(
        arch="topk",
        d_in=d_in,
        d_sae=d_sae,
        k=integer(cfg, "k"),
        input_scaling="none",
        d_out=out["W_dec"].shape[1] if transcoder else None,
        skip=skip,
    )
    return sae_cfg, out


def to_sparsify(sae: SAE) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors, cfg = export_tensors(sae)
    if cfg.arch != "topk" or cfg.input_scaling == "per_token":
        raise ConfigError("sparsify holds TopK SAEs on unnormalised inputs only")
    if cfg.is_transcoder and cfg.d_out != cfg.d_in:
        raise ConfigError(
            f"sparsify's transcoders write back at their input's width: d_out={cfg.d_out} is "
            f"not d_in={cfg.d_in}"
        )
    out = {"k": cfg.k, "d_in": cfg.d_in, "num_latents": cfg.d_sae, "normalize_decoder": True}
    if cfg.is_transcoder:
        out.update(transcode=True, skip_connection=cfg.skip)
    weights = {
        "encoder.weight": tensors["W_enc"].T.contiguous(),
        "encoder.bias": tensors["b_enc"],
        "W_dec": tensors["W_dec"],
        "b_dec": tensors["b_dec"],
    }
    if cfg.skip:
        weights["W_skip"] = tensors["W_skip"].T.contiguous()
    return out, weights


EXPORTS = ("saelens", "sparsify", "dictionary_learning")


def export(sae: SAE, path: str | Path, fmt: str) -> None:
    """Write `sae` as an SAELens, sparsify or dictionary_learning directory."""
    if fmt not in EXPORTS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(EXPORTS)}")
    if sae.cfg.is_transcoder and fmt == "dictionary_learning":
        raise ConfigError("dictionary_learning has no transcoders")
    path = Path(path)
    if fmt == "dictionary_learning":
        cfg, tensors = dictionary_learning.to_dictionary_learning(sae)
        files = (
            (dictionary_learning.WEIGHTS, lambda p: torch.save(tensors, p)),
            (dictionary_learning.CONFIG, cfg),
        )
    else:
        translate, weights = {
            "saelens": (to_saelens, SAELENS_WEIGHTS),
            "sparsify": (to_sparsify, WEIGHTS_NAME),
        }[fmt]
        cfg, tensors = translate(sae)
        files = ((weights, lambda p: save_file(tensors, str(p))), (CFG_NAME, cfg))
    path.mkdir(parents=True, exist_ok=True)
    (weights, write), (config_name, config) = files
    atomic_write(path / weights, write)
    atomic_write(path / config_name, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
