"""Writes the Llama Scope fixture of tests/test_library_files.py: a release folder
(hyperparams.json + checkpoints/final.safetensors, bfloat16, under the release's repo and folder
names, smaller than the release: d_model 16 for 4096) and the codes and reconstruction that
SAELens 6.54's own llama_scope loader (loading/pretrained_sae_loaders.py,
llama_scope_sae_huggingface_loader, the Hub download pointed at the local files) with the
release's norm_scaling_factor folded in (SAE.from_pretrained does so) gives. The decoder columns
have unit norm, as the lm-saes post-processing that made the release leaves them (then SAELens
and lm-saes select the same latents). Run in the SAELens environment:

    python tests/data/llama_scope/make.py tests/data/llama_scope
"""

import json
import math
import sys
from pathlib import Path

import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.loading import pretrained_sae_loaders as loaders
from safetensors.torch import save_file

D_MODEL, D_SAE, LAYER = 16, 48, 15
REPO = "fnlp/Llama3_1-8B-Base-LXR-8x"
FOLDER = f"Llama3_1-8B-Base-L{LAYER}R-8x"
NORM = 5.0  # the dataset's average norm at the hook


def main(root: Path) -> None:
    folder = root / REPO.split("/")[1] / FOLDER
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    decoder = torch.randn(D_MODEL, D_SAE, generator=g)
    tensors = {
        "encoder.weight": torch.randn(D_SAE, D_MODEL, generator=g) * 0.3,
        "encoder.bias": torch.randn(D_SAE, generator=g) * 0.1,
        "decoder.weight": decoder / decoder.norm(dim=0),
        "decoder.bias": torch.randn(D_MODEL, generator=g) * 0.5,
    }
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(folder / "checkpoints" / "final.safetensors"))
    hook = f"blocks.{LAYER}.hook_resid_post"
    hyperparams = {
        "d_model": D_MODEL,
        "expansion_factor": D_SAE // D_MODEL,
        "d_sae": D_SAE,
        "hook_point_in": hook,
        "hook_point_out": hook,
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": NORM, "out": NORM},
        "sparsity_include_decoder_norm": True,
        "use_glu_encoder": False,
        "act_fn": "jumprelu",
        "jump_relu_threshold": 0.4,
        "top_k": 5,
        "dtype": "torch.bfloat16",
    }
    (folder / "hyperparams.json").write_text(json.dumps(hyperparams, indent=4))
    files = {
        "hyperparams.json": folder / "hyperparams.json",
        "final.safetensors": folder / "checkpoints" / "final.safetensors",
    }
    loaders.hf_hub_download = lambda *args, **kwargs: str(
        files[(kwargs.get("filename") or args[1]).split("/")[-1]]
    )
    cfg, state, _ = loaders.llama_scope_sae_huggingface_loader(REPO, FOLDER, device="cpu")
    sae = JumpReLUSAE(
        JumpReLUSAEConfig(d_in=D_MODEL, d_sae=D_SAE, apply_b_dec_to_input=False, dtype="float32")
    )
    sae.load_state_dict({k: v.float() for k, v in state.items()})
    sae.fold_activation_norm_scaling_factor(math.sqrt(D_MODEL) / NORM)
    x = torch.randn(64, D_MODEL, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        codes = sae.encode(x)
        recons = sae.decode(codes)
    save_file({"x": x, "codes": codes, "recons": recons}, str(root / "codes.safetensors"))
    print(cfg["hook_name"], cfg["model_name"], "L0", float((codes != 0).sum(1).float().mean()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
