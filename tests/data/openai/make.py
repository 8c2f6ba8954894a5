"""Writes the OpenAI sparse_autoencoder fixtures of tests/test_library_files.py with OpenAI's own
code: their sparse_autoencoder/model.py (github.com/openai/sparse_autoencoder, which needs only
torch), importable as `openai_model`:

    PYTHONPATH=DIR_WITH_openai_model.py python tests/data/openai/make.py tests/data/openai

Each SAE is their Autoencoder, saved as the release files are (torch.save of its state_dict) at
the release's path (paths.py), beside the inputs and the codes and reconstruction their
encode/decode give (codes.safetensors). A TopK(k) SAE with layer-normed inputs as v5_32k, and a
ReLU SAE as v1."""

import sys
from pathlib import Path

import openai_model as their
import torch
from safetensors.torch import save_file

D_IN, D_SAE, K = 16, 48, 5


def write(root: Path, location: str, layer: int, activation, normalize: bool) -> None:
    torch.manual_seed(layer)
    ae = their.Autoencoder(D_SAE, D_IN, activation=activation, normalize=normalize)
    with torch.no_grad():
        for p in ae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    folder = root / "gpt2-small" / location / "autoencoders"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ae.state_dict(), folder / f"{layer}.pt")
    x = torch.randn(32, D_IN, generator=torch.Generator().manual_seed(1)) * 3 + 1
    with torch.no_grad():
        latents, info = ae.encode(x)
        recons = ae.decode(latents, info)
    out = folder / f"{layer}.codes.safetensors"
    save_file({"x": x, "codes": latents, "recons": recons}, str(out))
    l0 = float((latents != 0).sum(1).float().mean())
    print(location, layer, sorted(ae.state_dict()), "L0", l0)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    write(root, "resid_post_mlp_v5_32k", 6, their.TopK(K), normalize=True)
    write(root, "resid_delta_mlp", 3, torch.nn.ReLU(), normalize=False)
