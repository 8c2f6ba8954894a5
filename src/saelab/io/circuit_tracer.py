"""circuit-tracer's transcoder sets: one transcoder per layer, 0 .. L-1, which its attribution
graphs are built from (circuit-tracer 0.5: load_relu_transcoder and load_transcoder_set in
circuit_tracer/transcoder/single_layer_transcoder.py, load_transcoders_from_cache in
circuit_tracer/utils/caching.py, load_transcoder_from_hub in circuit_tracer/utils/hf_utils.py).

DIR/
  config.yaml               model_name, model_kind: transcoder_set, feature_input_hook,
                            feature_output_hook (the hooks of its ReplacementMLP: mlp.hook_in,
                            mlp.hook_out; or hook_resid_mid), scan
  layer_{i}.safetensors     W_enc [d_sae, d_model], W_dec [d_sae, d_model], b_enc [d_sae],
                            b_dec [d_model], activation_function.threshold [d_sae] (a JumpReLU;
                            none: a ReLU) and W_skip [d_model, d_model] (applied as x @ W_skip^T)

Its transcoders compute relu or jumprelu codes, f = pre * (pre > threshold): saelab's relu,
jumprelu, and batchtopk and matryoshka (their global threshold on every latent, as for SAELens)
export exactly; topk, gated and topafa have no such form and are refused. Pushed to the Hub as a
repo, the folder loads with circuit-tracer's load_transcoder_from_hub; locally, from its cache
(CIRCUIT_TRACER_CACHE_DIR/NAME, load_transcoders_from_cache("NAME")).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from ..errors import ConfigError
from .atomic import atomic_write
from .format import export_tensors

# saelab's hook sites as circuit-tracer's feature hooks (its ReplacementMLP's hook_in/hook_out)
INPUT_HOOKS = {"mlp_in": "mlp.hook_in", "resid_mid": "hook_resid_mid"}
OUTPUT_HOOKS = {"mlp_out": "mlp.hook_out"}
CONFIG = "config.yaml"


def layer_file(layer: int) -> str:
    return f"layer_{layer}.safetensors"


def transcoder_tensors(sae) -> dict[str, torch.Tensor]:
    """One transcoder's tensors in circuit-tracer's layout (expected_norm folded in)."""
    tensors, _ = export_tensors(sae)
    skip = tensors.pop("W_skip", None)
    fields, tensors = sae.arch.to_saelens(sae, tensors)  # relu or jumprelu, as SAELens has them
    if fields["architecture"] not in ("standard", "jumprelu"):
        raise ConfigError(
            f"circuit-tracer's transcoders compute relu or jumprelu codes: a {sae.cfg.arch} "
            "transcoder has no such form (batchtopk and matryoshka export with their threshold)"
        )
    out = {
        "W_enc": tensors["W_enc"].T.contiguous(),
        "W_dec": tensors["W_dec"].contiguous(),
        "b_enc": tensors["b_enc"],
        "b_dec": tensors["b_dec"],
    }
    if fields["architecture"] == "jumprelu":  # f = pre * (pre > theta) = relu's for theta >= 0
        out["activation_function.threshold"] = tensors["threshold"].clamp_min(0).contiguous()
    if skip is not None:
        out["W_skip"] = skip.T.contiguous()
    return out


def check_transcoder_set(saes: list) -> dict[int, object]:
    """{layer: transcoder} of a set circuit-tracer can load: transcoders of one model, from
    the same input site to the MLP's output of their own layer, one per layer 0 .. L-1, of one
    width, all with or all without a skip path."""
    if not saes:
        raise ConfigError("no transcoders to export")
    by_layer = {}
    for sae in saes:
        cfg, meta = sae.cfg, sae.cfg.metadata
        if not cfg.is_transcoder:
            raise ConfigError("circuit-tracer takes transcoders; this is an autoencoder")
        where = f"the transcoder of layer {meta.get('layer')}"
        if meta.get("site") not in INPUT_HOOKS or meta.get("target_site") not in OUTPUT_HOOKS:
            raise ConfigError(
                f"{where} reads {meta.get('site')} and writes {meta.get('target_site')}: "
                f"circuit-tracer's transcoders read {' or '.join(INPUT_HOOKS)} and write "
                f"{' or '.join(OUTPUT_HOOKS)}"
            )
        if meta.get("target_layer", meta["layer"]) != meta["layer"]:
            raise ConfigError(f"{where} writes to another layer: circuit-tracer's do not")
        if cfg.d_out != cfg.d_in:
            raise ConfigError(f"{where} has d_out={cfg.d_out} != d_in={cfg.d_in}")
        if meta["layer"] in by_layer:
            raise ConfigError(f"two transcoders for layer {meta['layer']}")
        by_layer[meta["layer"]] = sae
    layers = sorted(by_layer)
    if layers != list(range(len(layers))):
        missing = sorted(set(range(max(layers) + 1)) - set(layers))
        raise ConfigError(
            f"circuit-tracer needs a transcoder for every layer from 0: layers "
            f"{', '.join(map(str, missing))} have none"
        )
    for key in ("model", "site"):
        values = {sae.cfg.metadata.get(key) for sae in saes}
        if len(values) > 1:
            raise ConfigError(f"the transcoders differ in {key}: {sorted(map(str, values))}")
    for key in ("d_sae", "skip"):
        if len({getattr(sae.cfg, key) for sae in saes}) > 1:
            raise ConfigError(f"the transcoders differ in {key}; circuit-tracer takes one")
    return {layer: by_layer[layer] for layer in layers}


def export_transcoder_set(saes: list, path: str | Path, model_name: str | None = None) -> Path:
    """Write transcoders, one per layer, as a circuit-tracer transcoder set in `path`;
    model_name: the Hub id of the model circuit-tracer loads (default: the one the
    transcoders record, when it is one)."""
    by_layer = check_transcoder_set(saes)
    meta = by_layer[0].cfg.metadata
    recorded = str(meta.get("model", ""))
    if model_name is None:
        if recorded.count("/") != 1 or recorded.startswith(("builtin:", "/", ".")):
            raise ConfigError(
                f"the transcoders were trained on {recorded or 'a model they do not record'}, "
                "not a Hub id circuit-tracer can load: give one (model_name; for "
                "builtin:smollm2-135m, a 4-bit GGUF of it, HuggingFaceTB/SmolLM2-135M-Instruct)"
            )
        model_name = recorded
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for layer, sae in by_layer.items():
        tensors = transcoder_tensors(sae)
        atomic_write(path / layer_file(layer), lambda p, t=tensors: save_file(t, str(p)))
    config = {
        "model_name": model_name,
        "model_kind": "transcoder_set",
        "feature_input_hook": INPUT_HOOKS[meta["site"]],
        "feature_output_hook": OUTPUT_HOOKS[meta["target_site"]],
        "scan": f"saelab/{path.name}",
    }
    atomic_write(path / CONFIG, lambda p: p.write_text(yaml.safe_dump(config, sort_keys=False)))
    return path
