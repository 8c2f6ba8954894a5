"""TransformerLens's hook names (blocks.L.hook_SITE), which SAELens and Llama Scope record, as
saelab's hook points."""

from __future__ import annotations

import re

HOOK_NAME = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)")


def hook_metadata(model: str | None, hook_name: str | None) -> dict:
    """model_name and hook_name as recorded, plus saelab's model, layer and site where the hook
    name is one of saelab's hook points (blocks.L.hook_SITE, TransformerLens's names)."""
    recorded = {"model_name": model, "hook_name": hook_name}
    metadata = {key: value for key, value in recorded.items() if value is not None}
    hook = HOOK_NAME.fullmatch(str(hook_name or ""))
    if hook:
        metadata.update(layer=int(hook[1]), site=hook[2])
        if model is not None:
            metadata["model"] = model
    return metadata
