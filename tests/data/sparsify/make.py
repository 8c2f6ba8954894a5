"""Writes the sparsify fixtures of tests/test_library_files.py with EleutherAI sparsify
1.3.3's own code (run in a virtual environment with eai-sparsify==1.3.3 and torch; not part
of the test suite):

    python tests/data/sparsify/make.py tests/data/sparsify

Each folder is an SAE directory as sparsify's SparseCoder.save_to_disk writes it, with inputs
x.safetensors and the dense codes of sparsify's own encode (codes.safetensors; a transcoder's
also its output, sae(x).sae_out)."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from sparsify import SparseCoder, SparseCoderConfig

D_IN, D_SAE, K = 16, 48, 5


def write(folder: Path, seed: int, **cfg) -> None:
    torch.manual_seed(seed)
    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, **{"k": K, **cfg}))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        if sae.cfg.transcode:
            sae.W_dec.normal_(0, 0.2)
        if sae.W_skip is not None:
            sae.W_skip.normal_(0, 0.2)
    sae.save_to_disk(folder)
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(seed + 100)) * 2
    with torch.no_grad():
        acts, indices, _ = sae.encode(x)
        outputs = sae(x).sae_out if sae.cfg.transcode else None
    codes = torch.zeros(64, D_SAE).scatter_(1, indices, acts.float())
    save_file({"x": x}, str(folder / "x.safetensors"))
    extra = {} if outputs is None else {"outputs": outputs.float().contiguous()}
    save_file({"codes": codes, **extra}, str(folder / "codes.safetensors"))
    print(folder.name, "L0", float((codes != 0).sum(1).float().mean()))


def main(root: Path) -> None:
    write(root / "topk", 1)
    write(root / "transcoder", 2, transcode=True)
    write(root / "skip_transcoder", 4, transcode=True, skip_connection=True)
    write(root / "groupmax", 3, activation="groupmax", k=4)  # groups of 48 / 4 latents


if __name__ == "__main__":
    main(Path(sys.argv[1]))
