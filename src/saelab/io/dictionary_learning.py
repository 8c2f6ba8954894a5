"""dictionary_learning's SAE directories (Marks et al.): `ae.pt` (a torch state dict) and
`config.json` ({"trainer": {"dict_class": ..., "activation_dim", "dict_size", "k", ...}}).

  dict_class               saelab  its tensors
  AutoEncoder              relu    encoder.weight [d_sae, d_in], encoder.bias, decoder.weight
                                   [d_in, d_sae], bias (subtracted before the encoder: b_dec)
  AutoEncoderTopK          topk    encoder.weight, encoder.bias, decoder.weight, b_dec, k
  BatchTopKSAE             batchtopk  the same and threshold [] (-1 while unset)
  MatryoshkaBatchTopKSAE   matryoshka W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec, k,
                                   threshold, group_sizes (saelab's widths are their running sums)
  JumpReluAutoEncoder      jumprelu W_enc, b_enc, W_dec, b_dec, threshold [d_sae]; its encoder does
                                   not subtract b_dec, so b_enc' = b_enc + b_dec @ W_enc (exact)
  GatedAutoEncoder         gated   encoder.weight (no bias), gate_bias, r_mag, mag_bias,
                                   decoder.weight, decoder_bias

ae.pt is read with torch.load(weights_only=True), which unpickles tensors and plain containers
only and refuses any other object, so a file from a stranger cannot run code; a file it refuses
is reported as such. dictionary_learning has no input normalisation: per_token SAEs cannot be
written in its format, expected_norm ones are written with the scale folded in.
"""

from __future__ import annotations

import pickle
import re

import torch

from ..config import ConfigError, SAEConfig
from .format import SAEFormatError, export_tensors

WEIGHTS, CONFIG = "ae.pt", "config.json"
CLASSES = {
    "AutoEncoder": "relu",
    "AutoEncoderTopK": "topk",
    "BatchTopKSAE": "batchtopk",
    "MatryoshkaBatchTopKSAE": "matryoshka",
    "JumpReluAutoEncoder": "jumprelu",
    "GatedAutoEncoder": "gated",
}
TRAINERS = {
    "relu": "StandardTrainer",
    "topk": "TopKTrainer",
    "batchtopk": "BatchTopKTrainer",
    "matryoshka": "MatryoshkaBatchTopKTrainer",
    "jumprelu": "JumpReluTrainer",
    "gated": "GatedSAETrainer",
}


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of an ae.pt, unpickled with weights_only=True (tensors and containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused:
            raise SAEFormatError(
                f"{path} holds an object of {refused.group(1)}, not only tensors: saelab refuses to "
                "unpickle it (torch.load with weights_only=True), since that could run code"
            ) from None
        raise SAEFormatError(f"{path} is not a readable torch state dict") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise SAEFormatError(f"{path} is not a readable torch state dict: {err}") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise SAEFormatError(f"{path} is not a state dict of tensors")
    return state


def _linear(tensors, name):
    """A torch Linear's weight [out, in] as saelab's [in, out]."""
    return tensors[f"{name}.weight"].float().T.contiguous()


def from_dictionary_learning(
    config: dict, tensors: dict[str, torch.Tensor]
) -> tuple[SAEConfig, dict]:
    """(SAEConfig, tensors in saelab's file layout) of a dictionary_learning SAE."""
    trainer = config.get("trainer", config)
    dict_class = trainer.get("dict_class")
    if dict_class not in CLASSES:
        raise ConfigError(
            f"dictionary_learning dict_class {dict_class!r} is not supported "
            f"(supported: {', '.join(CLASSES)})"
        )
    arch, t, settings = CLASSES[dict_class], tensors, {}
    if arch == "relu":
        out = {
            "W_enc": _linear(t, "encoder"),
            "b_enc": t["encoder.bias"],
            "W_dec": _linear(t, "decoder"),
            "b_dec": t["bias"],
        }
    elif arch in ("topk", "batchtopk"):
        out = {
            "W_enc": _linear(t, "encoder"),
            "b_enc": t["encoder.bias"],
            "W_dec": _linear(t, "decoder"),
            "b_dec": t["b_dec"],
        }
    elif arch == "gated":
        out = {
            "W_enc": _linear(t, "encoder"),
            "b_gate": t["gate_bias"],
            "r_mag": t["r_mag"],
            "b_mag": t["mag_bias"],
            "W_dec": _linear(t, "decoder"),
            "b_dec": t["decoder_bias"],
        }
    else:
        out = {name: t[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if arch in ("topk", "batchtopk", "matryoshka"):
        settings["k"] = int(t["k"]) if "k" in t else int(trainer["k"])
    if arch in ("batchtopk", "matryoshka"):
        threshold = t["threshold"].float().reshape(())
        out["threshold"] = threshold if threshold >= 0 else torch.tensor(float("nan"))
    if arch == "matryoshka":
        settings["matryoshka_widths"] = torch.cumsum(t["group_sizes"], 0).tolist()
    if arch == "jumprelu":
        out["threshold"] = t["threshold"]
        out["b_enc"] = t["b_enc"] + t["b_dec"] @ t["W_enc"]
        settings["l0_coefficient"] = 0.0
    out = {name: value.float().contiguous() for name, value in out.items()}
    d_in, d_sae = out["W_enc"].shape
    for key, value in (("activation_dim", d_in), ("dict_size", d_sae)):
        if key in trainer and int(trainer[key]) != value:
            raise ConfigError(f"config.json says {key}={trainer[key]} but the weights have {value}")
    metadata = {
        key: trainer[key] for key in ("lm_name", "layer", "submodule_name") if key in trainer
    }
    return SAEConfig(
        arch=arch, d_in=d_in, d_sae=d_sae, input_scaling="none", metadata=metadata, **settings
    ), out


def to_dictionary_learning(sae) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, ae.pt state dict) of `sae` as dictionary_learning lays them out."""
    tensors, cfg = export_tensors(sae)
    if cfg.arch not in TRAINERS:
        raise ConfigError(
            f"dictionary_learning has no {cfg.arch} SAE (it has {', '.join(TRAINERS)})"
        )
    if cfg.input_scaling == "per_token":
        raise ConfigError(
            "dictionary_learning has no per-token input normalisation: export an SAE trained with "
            "--input-scaling none or expected_norm"
        )
    t, arch = tensors, cfg.arch
    if arch == "relu":
        out = {
            "bias": t["b_dec"],
            "encoder.weight": t["W_enc"].T,
            "encoder.bias": t["b_enc"],
            "decoder.weight": t["W_dec"].T,
        }
    elif arch in ("topk", "batchtopk"):
        out = {
            "encoder.weight": t["W_enc"].T,
            "encoder.bias": t["b_enc"],
            "decoder.weight": t["W_dec"].T,
            "b_dec": t["b_dec"],
        }
    elif arch == "gated":
        out = {
            "decoder_bias": t["b_dec"],
            "encoder.weight": t["W_enc"].T,
            "r_mag": t["r_mag"],
            "gate_bias": t["b_gate"],
            "mag_bias": t["b_mag"],
            "decoder.weight": t["W_dec"].T,
        }
    else:
        out = {name: t[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if arch in ("topk", "batchtopk", "matryoshka"):
        out["k"] = torch.tensor(cfg.k, dtype=torch.int)
    if arch in ("batchtopk", "matryoshka"):
        threshold = t["threshold"].reshape(())
        out["threshold"] = torch.tensor(-1.0) if torch.isnan(threshold) else threshold
    if arch == "matryoshka":
        widths = list(cfg.matryoshka_widths)
        out["group_sizes"] = torch.tensor([b - a for a, b in zip([0, *widths[:-1]], widths)])
    if arch == "jumprelu":
        out["threshold"] = t["threshold"]
        out["b_enc"] = t["b_enc"] - t["b_dec"] @ t["W_enc"]
    trainer = {
        "dict_class": next(c for c, a in CLASSES.items() if a == arch),
        "trainer_class": TRAINERS[arch],
        "activation_dim": cfg.d_in,
        "dict_size": cfg.d_sae,
        "exported_by": "saelab",
    }
    if arch in ("topk", "batchtopk", "matryoshka"):
        trainer["k"] = cfg.k
    recorded = {
        "lm_name": cfg.metadata.get("model", cfg.metadata.get("lm_name")),
        "layer": cfg.metadata.get("layer"),
    }
    trainer.update({key: value for key, value in recorded.items() if value is not None})
    return {"trainer": trainer}, {name: value.contiguous() for name, value in out.items()}
