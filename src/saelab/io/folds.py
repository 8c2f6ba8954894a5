"""Exact rewrites of other libraries' encoders as saelab's (which subtracts b_dec from the
input and has unit-norm decoder rows): the same codes and reconstruction, other tensors."""

from __future__ import annotations

import torch


def fold_input_bias(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encoder that does not subtract b_dec (SAELens's apply_b_dec_to_input = false) as
    saelab's, which does: the encoder biases absorb s = b_dec @ W_enc exactly, b_enc + s, or
    for gated b_gate + s and b_mag + s * exp(r_mag) (its magnitude path is W_enc * exp(r_mag))."""
    shift = tensors["b_dec"] @ tensors["W_enc"]
    if "b_enc" in tensors:
        return {**tensors, "b_enc": tensors["b_enc"] + shift}
    return {
        **tensors,
        "b_gate": tensors["b_gate"] + shift,
        "b_mag": tensors["b_mag"] + shift * tensors["r_mag"].exp(),
    }


def fold_decoder_norms(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SAELens's rescale_acts_by_decoder_norm (saes/topk_sae.py: the pre-activations times
    n = ||W_dec_i|| before the top-k, the codes divided by n before decoding) folded in exactly:
    W_enc[:, i] * n_i, b_enc * n, W_dec[i] / n_i give the same codes and reconstruction."""
    n = tensors["W_dec"].norm(dim=1)
    return {
        **tensors,
        "W_enc": tensors["W_enc"] * n,
        "b_enc": tensors["b_enc"] * n,
        "W_dec": tensors["W_dec"] / n[:, None],
    }
