"""Writes the SAELens fixtures of tests/test_library_files.py with SAELens's own code (run in
a virtual environment with sae-lens==6.54.0 and torch; not part of the test suite):

    python tests/data/saelens/make.py tests/data/saelens

Each folder holds an SAE directory as SAELens reads it (cfg.json, sae_weights.safetensors),
the inputs x.safetensors and the codes SAELens's own SAE.load_from_disk(...).encode(x) gives
(codes.safetensors). The pre-6 layouts (the SAEBench-era releases) are written by hand in that
layout, since SAELens 6 no longer writes it, and read back by SAELens's loader."""

import json
import sys
from pathlib import Path

import sae_lens
import torch
from sae_lens import (
    SAE,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    TopKSAE,
    TopKSAEConfig,
    Transcoder,
    TranscoderConfig,
)
from safetensors.torch import save_file

D_IN, D_SAE, K = 16, 48, 5


def weights(seed: int) -> dict[str, torch.Tensor]:
    """Random weights with decoder rows of norms 0.5..2 (not unit: rescaling matters)."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(D_SAE, D_IN, generator=g)
    W_dec = (
        W_dec / W_dec.norm(dim=1, keepdim=True) * (0.5 + 1.5 * torch.rand(D_SAE, 1, generator=g))
    )
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) * 0.3,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.1,
        "W_dec": W_dec,
        "b_dec": torch.randn(D_IN, generator=g) * 0.1,
    }


def finish(folder: Path, seed: int) -> None:
    """Load `folder` with SAELens and store its codes of random inputs."""
    x = torch.randn(64, D_IN, generator=torch.Generator().manual_seed(seed + 100)) * 2
    sae = SAE.load_from_disk(folder)
    with torch.no_grad():
        codes = sae.encode(x)
        outputs = {"outputs": sae(x).contiguous()} if hasattr(sae.cfg, "d_out") else {}
    save_file({"x": x}, str(folder / "x.safetensors"))
    save_file({"codes": codes.contiguous(), **outputs}, str(folder / "codes.safetensors"))
    print(folder.name, type(sae).__name__, "L0", float((codes != 0).sum(1).float().mean()))


def by_hand(folder: Path, cfg: dict, tensors: dict, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    finish(folder, seed)


def main(root: Path) -> None:
    pre6 = {
        "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
        "model_name": "gpt2", "hook_name": "blocks.8.hook_resid_pre", "hook_layer": 8,
        "apply_b_dec_to_input": True, "sae_lens_training_version": "3.12.0",
    }  # fmt: skip
    # 1. a pre-6 TopK SAE: architecture standard, the activation function says topk
    by_hand(
        root / "pre6_topk",
        {**pre6, "architecture": "standard", "activation_fn_str": "topk",
         "activation_fn_kwargs": {"k": K}, "normalize_activations": "none"},
        weights(1), 1,
    )  # fmt: skip
    # 2. the same with no architecture field at all (older still)
    by_hand(
        root / "pre6_topk_no_architecture",
        {**pre6, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K},
         "normalize_activations": False},
        weights(2), 2,
    )  # fmt: skip
    # 3. a pre-6 ReLU SAE with the legacy boolean normalize_activations
    by_hand(
        root / "pre6_relu_bool_norm",
        {**pre6, "architecture": "standard", "activation_fn_str": "relu",
         "normalize_activations": False},
        weights(3), 3,
    )  # fmt: skip
    # 4. SAELens 6 TopK with rescale_acts_by_decoder_norm (its trainer's default)
    w = weights(4)
    sae = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=True))
    sae.load_state_dict(w)
    sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name = "gpt2", "blocks.8.hook_resid_pre"
    sae.cfg.metadata.sae_lens_version = sae_lens.__version__
    sae.save_model(root / "v6_topk_rescaled")
    finish(root / "v6_topk_rescaled", 4)
    # 5. SAELens 6 JumpReLU with thresholds <= 0 on some latents, metadata of its model and hook
    w = weights(5)
    threshold = torch.linspace(-0.2, 0.4, D_SAE)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE))
    sae.load_state_dict({**w, "threshold": threshold})
    sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name = "gpt2", "blocks.8.hook_resid_pre"
    sae.cfg.metadata.sae_lens_version = sae_lens.__version__
    sae.save_model(root / "v6_jumprelu_metadata")
    finish(root / "v6_jumprelu_metadata", 5)
    # 6. SAELens 6 standard with expected_average_only_in (nothing at run time in SAELens)
    by_hand(
        root / "v6_standard_expected_average",
        {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
         "architecture": "standard", "apply_b_dec_to_input": True,
         "normalize_activations": "expected_average_only_in", "reshape_activations": "none",
         "metadata": {"sae_lens_version": sae_lens.__version__, "model_name": "gpt2",
                      "hook_name": "blocks.8.hook_resid_pre"}},
        weights(6), 6,
    )  # fmt: skip
    # 7. SAELens 6 gated whose encoder does not subtract b_dec
    w = weights(7)
    g = torch.Generator().manual_seed(70)
    gated = {
        "W_enc": w["W_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"] * 5,
        "b_gate": torch.randn(D_SAE, generator=g) * 0.1,
        "b_mag": torch.randn(D_SAE, generator=g) * 0.1,
        "r_mag": torch.randn(D_SAE, generator=g) * 0.3,
    }  # fmt: skip
    sae = GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False))
    sae.load_state_dict(gated)
    sae.cfg.metadata.sae_lens_version = sae_lens.__version__
    sae.save_model(root / "v6_gated_no_b_dec_input")
    finish(root / "v6_gated_no_b_dec_input", 7)
    # 8. SAELens 6 transcoders: a JumpReLU skip transcoder (W_skip [d_out, d_in]) and a plain
    #    one, d_out 12; their outputs stored too
    for name, cls, config in (
        ("v6_jumprelu_skip_transcoder", JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig),
        ("v6_transcoder", Transcoder, TranscoderConfig),
    ):
        g = torch.Generator().manual_seed(8)
        w = {**weights(8), "W_dec": torch.randn(D_SAE, 12, generator=g) * 0.3}
        w["b_dec"] = torch.randn(12, generator=g) * 0.1
        if "skip" in name:
            w["W_skip"] = torch.randn(12, D_IN, generator=g) * 0.2
        if "jumprelu" in name:
            w["threshold"] = torch.rand(D_SAE, generator=g) * 0.3
        sae = cls(config(d_in=D_IN, d_sae=D_SAE, d_out=12, apply_b_dec_to_input=False))
        sae.load_state_dict(w)
        sae.cfg.metadata.sae_lens_version = sae_lens.__version__
        sae.save_model(root / name)
        finish(root / name, 8)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
