"""Hook points in transformer blocks, found generically, and `harvest` / `harvest_many`, which
stop the forward pass right after the deepest hook point they capture.

Sites of block L (blocks counted from 0):
  resid_pre   the block's input       == transformers' output_hidden_states[L]
  attn_out    the attention sublayer's output before it is added to the residual stream
  resid_mid   the residual stream between attention and MLP: resid_pre + attn_out (BERT: after
              the attention's LayerNorm); none in parallel blocks (GPT-NeoX's default, GPT-J)
  mlp_in      the MLP's input, after its norm (what a transcoder reads)
  mlp_out     the MLP sublayer's output before it is added to the residual stream
  resid_post  the block's output      == output_hidden_states[L + 1], except after the last
              block, where transformers reports the output after the final norm
A hook point is a (layer, site) or, for a model the generic finder does not know, any module by
its path: "model.layers.15.mlp" (its output) or "model.layers.15.mlp:input".
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ArgumentError, SaelabError

DEFAULT_SITE = "resid_post"
SITES = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
BLOCK_LIST_NAMES = ("layers", "h", "layer", "blocks")
# submodule paths inside a block, first match wins: Llama/Mistral/Qwen/Gemma, GPT-2,
# BERT (the attention's dense projection, before its residual add and LayerNorm), GPT-NeoX
ATTN_PATHS = ("self_attn", "attn", "attention.output.dense", "attention")
MLP_PATHS = ("mlp", "output.dense")
MLP_IN_PATHS = ("mlp", "intermediate")  # hooked at their input
# (path, hook its input): the pre-MLP norm's input (Gemma 2/3 name it pre_feedforward_layernorm
# and norm the attention's output with post_attention_layernorm), else BERT's attention output
RESID_MID_PATHS = (
    ("pre_feedforward_layernorm", True),
    ("post_attention_layernorm", True),
    ("ln_2", True),
    ("attention", False),
)
INPUT = ":input"


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


@dataclass(frozen=True)
class HookPoint:
    """A site of a block (layer, site), or a module by its path (layer None; site the path,
    ending in ":input" for the module's input)."""

    layer: int | None
    site: str

    @property
    def name(self) -> str:
        return self.site if self.layer is None else f"layers.{self.layer}.{self.site}"


def parse_hookpoints(text: str, n_layers: int) -> list[HookPoint]:
    """Comma-separated hook points: layers.L.SITE, with L a layer, a range A-B (inclusive) or *
    (every layer), in the order given, each once."""
    points: list[HookPoint] = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        found = re.fullmatch(r"layers\.(\*|\d+|\d+-\d+)\.(\w+)", item)
        if not found or found[2] not in SITES:
            raise SiteError(
                f"hook point {item!r} is not layers.L.SITE (L a layer, A-B or *; SITE one of "
                f"{', '.join(SITES)})"
            )
        layer, site = found[1], found[2]
        first, last = (0, n_layers - 1) if layer == "*" else map(int, (layer.split("-") * 2)[:2])
        if not 0 <= first <= last < n_layers:
            raise SiteError(f"hook point {item!r}: the model has layers 0..{n_layers - 1}")
        points += [HookPoint(i, site) for i in range(first, last + 1)]
    if not points:
        raise SiteError(f"no hook points in {text!r}")
    names = [point.name for point in points]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise SiteError(f"hook point(s) named twice: {', '.join(twice)}")
    return points


def site_module(model: nn.Module, layer: int | None, site: str) -> tuple[nn.Module, bool]:
    """(module to hook, whether to hook its input rather than its output)."""
    if layer is None:
        return _module_at(model, site)
    if site not in SITES:
        raise SiteError(
            f"unknown site {site!r}; sites: {', '.join(SITES)} (or a module path, e.g. "
            "model.layers.3.mlp)"
        )
    blocks = blocks_of(model)
    if not isinstance(layer, int) or not 0 <= layer < len(blocks):
        raise SiteError(
            f"layer {layer} out of range: {type(model).__name__} has {len(blocks)} blocks "
            f"(0..{len(blocks) - 1})"
        )
    block = blocks[layer]
    if site in ("resid_pre", "resid_post"):
        return block, site == "resid_pre"
    if site == "resid_mid":
        if getattr(getattr(model, "config", None), "use_parallel_residual", False) or not any(
            _has(block, path) for path, _ in RESID_MID_PATHS
        ):
            raise SiteError(
                f"{type(block).__name__} runs attention and MLP in parallel (or has no pre-MLP "
                "norm saelab knows): there is no resid_mid between them"
            )
        return next((block.get_submodule(p), i) for p, i in RESID_MID_PATHS if _has(block, p))
    paths = {"attn_out": ATTN_PATHS, "mlp_out": MLP_PATHS, "mlp_in": MLP_IN_PATHS}[site]
    for path in paths:
        if _has(block, path):
            return block.get_submodule(path), site == "mlp_in"
    children = ", ".join(name for name, _ in block.named_children())
    raise SiteError(
        f"cannot find the {site} sublayer in {type(block).__name__} (children: {children}); "
        "name the module by its path instead"
    )


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _module_at(model: nn.Module, site: str) -> tuple[nn.Module, bool]:
    """A module path, with ":input" for its input."""
    path, use_input = (site[: -len(INPUT)], True) if site.endswith(INPUT) else (site, False)
    if not _has(model, path):
        parts = path.split(".")
        prefixes = (".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1))
        parent = next((prefix for prefix in prefixes if _has(model, prefix)), "")
        children = ", ".join(n for n, _ in model.get_submodule(parent).named_children())
        raise SiteError(
            f"{type(model).__name__} has no module {path!r}"
            + (f"; {parent or 'the model'} has: {children}" if children else "")
        )
    return model.get_submodule(path), use_input


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _input(args, kwargs):
    """A module's first input, given positionally or by keyword."""
    return args[0] if args else next(iter(kwargs.values()))


@contextmanager
def capture(model: nn.Module, points: list[HookPoint], stop: bool = True):
    """Context yielding a dict {point.name: activation} filled by the next forward pass; with
    stop=True the pass ends once every point is captured (later blocks never run)."""
    hooked = [(point, *site_module(model, point.layer, point.site)) for point in points]
    store: dict[str, torch.Tensor] = {}

    def grab(name, value):
        store.setdefault(name, _first(value))
        if stop and len(store) == len(hooked):
            raise _Stop

    handles = [
        module.register_forward_pre_hook(
            lambda mod, args, kwargs, name=point.name: grab(name, _input(args, kwargs)),
            with_kwargs=True,
        )
        if use_input
        else module.register_forward_hook(
            lambda mod, args, output, name=point.name: grab(name, output)
        )
        for point, module, use_input in hooked
    ]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _replace_first(value, new):
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    return new


def splice_point(model: nn.Module, layer: int | None, site: str) -> tuple[nn.Module, bool]:
    """site_module for a splice: resid_mid only where it is a module's output (BERT's);
    elsewhere it is hooked at the pre-MLP norm's input, and replacing that would leave the
    residual the block carries forward unchanged."""
    module, use_input = site_module(model, layer, site)
    if site == "resid_mid" and use_input:
        raise SiteError(
            f"resid_mid of {type(model).__name__} cannot be spliced: it is no module's input or "
            "output (the pre-MLP norm's input is hooked; the residual carried on is not)"
        )
    return module, use_input


@contextmanager
def splice(model, layer: int, site: str, fn):
    """Within the context, every forward pass replaces the activation a [batch, seq, d] at the
    site by fn(a) and continues with the rest of the model (see splice_point)."""
    module, use_input = splice_point(_hf_model(model), layer, site)
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


@contextmanager
def splice_transcoder(model, source: HookPoint, target: HookPoint, fn):
    """Within the context, every forward pass replaces the activation at `target` by
    fn(x, a): x the activation at `source` (earlier in the pass, read, not changed), a the one
    it replaces; a transcoder's splice (from the MLP's input onto its output)."""
    net = _hf_model(model)
    read, read_input = site_module(net, source.layer, source.site)
    module, use_input = splice_point(net, target.layer, target.site)
    seen: dict[str, torch.Tensor] = {}

    def keep(value):
        seen["x"] = _first(value)

    if read_input:
        handles = [
            read.register_forward_pre_hook(
                lambda mod, args, kwargs: keep(_input(args, kwargs)), with_kwargs=True
            )
        ]
    else:
        handles = [read.register_forward_hook(lambda mod, args, output: keep(output))]
    with splice(net, target.layer, target.site, lambda a: fn(seen["x"], a)):
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


@torch.inference_mode()
def harvest_many(
    model,
    input_ids: torch.Tensor,
    points: list[HookPoint],
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """input_ids [batch, seq] -> {point.name: activations [batch, seq, d]} from one forward
    pass, stopped after the deepest point."""
    net = _hf_model(model)
    names = [point.name for point in points]
    if len(set(names)) != len(names):
        raise SiteError(f"a hook point is named twice: {', '.join(names)}")
    device = next(net.parameters()).device
    with capture(net, points) as store:
        try:
            net(
                input_ids=input_ids.to(device),
                attention_mask=None if attention_mask is None else attention_mask.to(device),
            )
        except _Stop:
            pass
    missing = [name for name in names if name not in store]
    if missing:
        raise SiteError(f"the forward pass never reached {', '.join(missing)}")
    return store


def harvest(
    model,
    input_ids: torch.Tensor,
    layer: int | None,
    site: str = DEFAULT_SITE,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """input_ids [batch, seq] -> activations [batch, seq, d] at `site` of block `layer` (or at
    the module path `site` when layer is None)."""
    point = HookPoint(layer, site)
    return harvest_many(model, input_ids, [point], attention_mask)[point.name]
