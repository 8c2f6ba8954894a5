"""Gated SAE (Rajamanoharan et al. 2024): a gate decides which latents fire, a magnitude path
how strongly, sharing the encoder up to a per-latent rescaling.

  gate       pi_g = (x - b_dec) W_enc + b_gate
  magnitude  pi_m = (x - b_dec)(W_enc * exp(r_mag)) + b_mag = exp(r_mag) (pi_g - b_gate) + b_mag
  code       f = 1[pi_g > 0] * relu(pi_m)
Loss: ||x - x_hat||^2 + lam * sum_i relu(pi_g)_i ||W_dec,i||
      + ||x - (relu(pi_g) W_dec' + b_dec')||^2,
where W_dec', b_dec' are stop-gradient copies: the auxiliary term trains the gate to reconstruct
on its own, since no gradient reaches it through the step function. lam is in the units of the
squared error summed over d_in (as relu's l1_coefficient, and SAELens). Tensor names are
SAELens's: W_enc, b_gate, r_mag, b_mag, W_dec, b_dec.
"""

import torch

from .architecture import Architecture, from_linear, pick
from .relu import RELU_ENCODER_INIT_SCALE, L1Settings, weighted_l1

SAELENS_GATED = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")


class Gated(Architecture):
    name = "gated"
    settings = L1Settings
    knobs = ("l1_coefficient",)
    encoder_init_scale = RELU_ENCODER_INIT_SCALE  # an L1-trained gate starts near-sparse, as relu
    encoder_bias = "b_gate"
    saelens_names = ("gated",)
    dictionary_learning_class, dictionary_learning_trainer = "GatedAutoEncoder", "GatedSAETrainer"

    def add_state(self, sae):
        sae.r_mag = torch.nn.Parameter(torch.zeros(sae.cfg.d_sae))
        sae.b_mag = torch.nn.Parameter(torch.zeros(sae.cfg.d_sae))

    def activate(self, sae, pre, x):
        """pre = pi_g [n, h] -> f = 1[pi_g > 0] relu(exp(r_mag) (pi_g - b_gate) + b_mag)."""
        magnitude = torch.exp(sae.r_mag) * (pre - sae.b_gate) + sae.b_mag
        return (pre > 0).to(pre.dtype) * torch.relu(magnitude)

    def penalty(self, sae, f, pre, x):
        """The L1 of the gate's activations (weighted by decoder norms) and the gate's own
        reconstruction through the frozen decoder, both averaged over tokens."""
        gate = torch.relu(pre)
        through_gate = gate @ sae.W_dec.detach() + sae.b_dec.detach()
        return {
            "l1": sae.cfg.l1_coefficient * weighted_l1(sae, gate),
            "gate_aux": (x - through_gate).square().sum(-1).mean(),
        }

    def to_saelens(self, sae, tensors):
        return {"architecture": "gated"}, pick(tensors, *SAELENS_GATED)

    def from_saelens(self, cfg, tensors):
        return {}, pick(tensors, *SAELENS_GATED)

    def to_dictionary_learning(self, cfg, tensors):
        """GatedAutoEncoder: encoder.weight (no bias), gate_bias, r_mag, mag_bias,
        decoder.weight, decoder_bias."""
        return {}, {
            "encoder.weight": tensors["W_enc"].T,
            "gate_bias": tensors["b_gate"],
            "r_mag": tensors["r_mag"],
            "mag_bias": tensors["b_mag"],
            "decoder.weight": tensors["W_dec"].T,
            "decoder_bias": tensors["b_dec"],
        }

    def from_dictionary_learning(self, trainer, tensors):
        return {}, {
            "W_enc": from_linear(tensors["encoder.weight"]),
            "b_gate": tensors["gate_bias"],
            "r_mag": tensors["r_mag"],
            "b_mag": tensors["mag_bias"],
            "W_dec": from_linear(tensors["decoder.weight"]),
            "b_dec": tensors["decoder_bias"],
        }
