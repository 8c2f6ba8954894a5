"""dictionary_learning's SAE directories (Marks et al.): `ae.pt` (a torch state dict) and
`config.json` ({"trainer": {"dict_class": ..., "activation_dim", "dict_size", "k", ...}}).
Each architecture names its dict_class and lays out its own tensors
(Architecture.to_dictionary_learning / from_dictionary_learning, in its file in sae/):

  dict_class               saelab
  AutoEncoder              relu
  AutoEncoderTopK          topk
  BatchTopKSAE             batchtopk
  MatryoshkaBatchTopKSAE   matryoshka
  JumpReluAutoEncoder      jumprelu
  GatedAutoEncoder         gated

ae.pt is read with torch.load(weights_only=True), which unpickles tensors and plain containers
only and refuses any other object, so a file from a stranger cannot run code; a file it refuses
is reported as such. dictionary_learning has no input normalisation: per_token SAEs cannot be
written in its format, expected_norm ones are written with the scale folded in.
"""

from __future__ import annotations

import pickle
import re

import torch

from .. import rundir
from ..errors import ConfigError
from ..sae.config import SAEConfig
from ..sae.registry import ARCHITECTURES
from .format import SAEFormatError, export_tensors

WEIGHTS, CONFIG = rundir.DICTIONARY_LEARNING_WEIGHTS, "config.json"


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of an ae.pt, unpickled with weights_only=True (tensors and containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused:
            raise SAEFormatError(
                f"{path} holds an object of {refused.group(1)}, not only tensors: saelab refuses "
                "to unpickle it (torch.load with weights_only=True), since that could run code"
            ) from None
        raise SAEFormatError(f"{path} is not a readable torch state dict") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise SAEFormatError(f"{path} is not a readable torch state dict: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise SAEFormatError(f"{path} is not a state dict of tensors")
    return state


def _by_class() -> dict:
    """The architectures dictionary_learning has, by dict_class."""
    return {
        arch.dictionary_learning_class: arch
        for arch in ARCHITECTURES.values()
        if arch.dictionary_learning_class
    }


def from_dictionary_learning(
    config: dict, tensors: dict[str, torch.Tensor]
) -> tuple[SAEConfig, dict]:
    """(SAEConfig, tensors in saelab's file layout) of a dictionary_learning SAE."""
    trainer = config.get("trainer", config)
    dict_class = trainer.get("dict_class")
    readers = _by_class()
    if dict_class not in readers:
        raise ConfigError(
            f"dictionary_learning dict_class {dict_class!r} is not supported "
            f"(supported: {', '.join(readers)})"
        )
    arch = readers[dict_class]
    settings, out = arch.from_dictionary_learning(trainer, tensors)
    out = {name: value.float().contiguous() for name, value in out.items()}
    d_in, d_sae = out["W_enc"].shape
    for key, value in (("activation_dim", d_in), ("dict_size", d_sae)):
        if key in trainer and trainer[key] != value:
            raise ConfigError(f"config.json says {key}={trainer[key]} but the weights have {value}")
    metadata = {
        key: trainer[key] for key in ("lm_name", "layer", "submodule_name") if key in trainer
    }
    cfg = SAEConfig(
        arch=arch.name, d_in=d_in, d_sae=d_sae, input_scaling="none", metadata=metadata, **settings
    )
    return cfg, out


def to_dictionary_learning(sae) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, ae.pt state dict) of `sae` as dictionary_learning lays them out."""
    tensors, cfg = export_tensors(sae)
    if not sae.arch.dictionary_learning_class:
        has = ", ".join(arch.name for arch in _by_class().values())
        raise ConfigError(f"dictionary_learning has no {cfg.arch} SAE (it has {has})")
    if cfg.input_scaling == "per_token":
        raise ConfigError(
            "dictionary_learning has no per-token input normalisation: export an SAE trained "
            "with --input-scaling none or expected_norm"
        )
    fields, out = sae.arch.to_dictionary_learning(cfg, tensors)
    trainer = {
        "dict_class": sae.arch.dictionary_learning_class,
        "trainer_class": sae.arch.dictionary_learning_trainer,
        "activation_dim": cfg.d_in,
        "dict_size": cfg.d_sae,
        "exported_by": "saelab",
        **fields,
    }
    recorded = {
        "lm_name": cfg.metadata.get("model", cfg.metadata.get("lm_name")),
        "layer": cfg.metadata.get("layer"),
    }
    trainer.update({key: value for key, value in recorded.items() if value is not None})
    return {"trainer": trainer}, {name: value.contiguous() for name, value in out.items()}
