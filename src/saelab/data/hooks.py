"""Hook sites in transformer blocks, found generically, and `harvest`, which stops the forward
pass right after the hooked block.

Sites of block L (blocks counted from 0):
  resid_pre   the block's input       == transformers' output_hidden_states[L]
  resid_post  the block's output      == output_hidden_states[L + 1], except after the last
              block, where transformers reports the output after the final norm
  attn_out    the attention sublayer's output before it is added to the residual stream
  mlp_out     the MLP sublayer's output before it is added to the residual stream
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ArgumentError, SaelabError

DEFAULT_SITE = "resid_post"
SITES = ("resid_pre", "resid_post", "attn_out", "mlp_out")
BLOCK_LIST_NAMES = ("layers", "h", "layer", "blocks")
# submodule paths inside a block, first match wins: Llama/Mistral/Qwen/Gemma, GPT-2,
# BERT (the attention's dense projection, before its residual add and LayerNorm), GPT-NeoX
ATTN_PATHS = ("self_attn", "attn", "attention.output.dense", "attention")
MLP_PATHS = ("mlp", "output.dense")


class SiteError(SaelabError, ValueError):
    """A layer or hook site that the model does not have."""


class _Stop(Exception):
    """Raised by a hook to end the forward pass once the activation is captured."""


def _hf_model(model) -> nn.Module:
    """The torch module of a LanguageModel, or the module itself."""
    module = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(module, nn.Module):
        raise ArgumentError(
            "model must be a LanguageModel (saelab.load_model) or a torch module, got "
            f"{type(model).__name__}"
        )
    return module


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks: the longest ModuleList named like one."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in BLOCK_LIST_NAMES
    ]
    if n_layers is not None:
        candidates = [c for c in candidates if len(c) == n_layers] or candidates
    if not candidates:
        raise SiteError(f"cannot find the transformer blocks of {type(model).__name__}")
    return max(candidates, key=len)


def site_module(model: nn.Module, layer: int, site: str) -> tuple[nn.Module, bool]:
    """(module to hook, whether to hook its input rather than its output)."""
    if site not in SITES:
        raise SiteError(f"unknown site {site!r}; sites: {', '.join(SITES)}")
    blocks = blocks_of(model)
    if not isinstance(layer, int) or not 0 <= layer < len(blocks):
        raise SiteError(
            f"layer {layer} out of range: {type(model).__name__} has {len(blocks)} blocks "
            f"(0..{len(blocks) - 1})"
        )
    block = blocks[layer]
    if site in ("resid_pre", "resid_post"):
        return block, site == "resid_pre"
    for path in ATTN_PATHS if site == "attn_out" else MLP_PATHS:
        try:
            return block.get_submodule(path), False
        except AttributeError:
            continue
    children = ", ".join(name for name, _ in block.named_children())
    raise SiteError(
        f"cannot find the {site} sublayer in {type(block).__name__} (children: {children})"
    )


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


@contextmanager
def capture(model: nn.Module, layer: int, site: str, stop: bool = True):
    """Context yielding a dict whose "acts" is filled by the next forward pass; with stop=True
    the pass ends right after the capture (the rest of the model never runs)."""
    module, use_input = site_module(model, layer, site)
    store: dict[str, torch.Tensor] = {}

    def grab(value):
        store["acts"] = _first(value)
        if stop:
            raise _Stop

    if use_input:
        handle = module.register_forward_pre_hook(
            lambda mod, args, kwargs: grab(args[0] if args else kwargs["hidden_states"]),
            with_kwargs=True,
        )
    else:
        handle = module.register_forward_hook(lambda mod, args, output: grab(output))
    try:
        yield store
    finally:
        handle.remove()


def _replace_first(value, new):
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    return new


@contextmanager
def splice(model, layer: int, site: str, fn):
    """Within the context, every forward pass replaces the activation a [batch, seq, d] at the
    site by fn(a) and continues with the rest of the model."""
    module, use_input = site_module(_hf_model(model), layer, site)
    if use_input:

        def pre_hook(mod, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:
        handle = module.register_forward_hook(
            lambda mod, args, output: _replace_first(output, fn(_first(output)))
        )
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def harvest(
    model,
    input_ids: torch.Tensor,
    layer: int,
    site: str = DEFAULT_SITE,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """input_ids [batch, seq] -> activations [batch, seq, d_model] at `site` of block `layer`."""
    net = _hf_model(model)
    device = next(net.parameters()).device
    with capture(net, layer, site) as store:
        try:
            net(
                input_ids=input_ids.to(device),
                attention_mask=None if attention_mask is None else attention_mask.to(device),
            )
        except _Stop:
            pass
    if "acts" not in store:
        raise SiteError(f"the forward pass never reached {site} of layer {layer}")
    return store["acts"]
