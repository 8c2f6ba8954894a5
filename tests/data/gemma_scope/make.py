"""Writes the Gemma Scope fixture of tests/test_library_files.py: a params.npz in the release's
layout and dtype (float32 W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold)
under the release's folder names, and the codes SAELens 6.54's own Gemma Scope loader
(loading/pretrained_sae_loaders.py, gemma_2_sae_huggingface_loader, with the Hub download
pointed at the local file) and its JumpReLU SAE give. Run in the SAELens environment:

    python tests/data/gemma_scope/make.py tests/data/gemma_scope
"""

import sys
from pathlib import Path

import numpy as np
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.loading import pretrained_sae_loaders as loaders
from safetensors.torch import save_file

D_IN, D_SAE = 256, 64  # smaller than the release (2304 x 16k): the same layout and dtype
REPO, FOLDER = "google/gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82"


def main(root: Path) -> None:
    folder = root / "gemma-scope-2b-pt-res" / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    params = {
        "W_enc": (g.normal(size=(D_IN, D_SAE)) * 0.02).astype(np.float32),
        "W_dec": (g.normal(size=(D_SAE, D_IN)) * 0.02).astype(np.float32),
        "b_enc": (g.normal(size=D_SAE) * 0.1).astype(np.float32),
        "b_dec": (g.normal(size=D_IN) * 0.5).astype(np.float32),
        "threshold": np.abs(g.normal(size=D_SAE) * 0.2).astype(np.float32),
    }
    np.savez(folder / "params.npz", **params)
    loaders.hf_hub_download = lambda **kwargs: str(folder / "params.npz")
    cfg, state, _ = loaders.gemma_2_sae_huggingface_loader(REPO, FOLDER)
    cfg["d_sae"] = D_SAE  # the folder says 16k; this fixture's dictionary is smaller
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False))
    sae.load_state_dict(state)
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        codes = sae.encode(x)
    save_file({"x": x, "codes": codes}, str(root / "codes.safetensors"))
    print(cfg["hook_name"], cfg["model_name"], "L0", float((codes != 0).sum(1).float().mean()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
