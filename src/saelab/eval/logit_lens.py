"""The logit lens of SAE latents: which output tokens a latent's decoder direction promotes
and suppresses when read out through the model's final norm and unembedding.

For a direction d [d_model] (a decoder row, in the model's units):
  lens(d) = W_U norm(d) - W_U norm(0)
i.e. the model's own final norm module applied as the model applies it (RMSNorm: d scaled to
unit RMS times its weight, Gemma's 1 + weight included; LayerNorm: centred first), with the
parts that do not depend on d (LayerNorm's and the head's biases) taken out. Norms rescale d
by a positive number, so the ranking of tokens is that of the direction itself.
"""

from __future__ import annotations

import torch

FINAL_NORMS = (
    "model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.final_layernorm",
    "model.decoder.final_layer_norm",
)


def final_norm(net) -> torch.nn.Module:
    """The norm applied before the unembedding of a causal LM."""
    for path in FINAL_NORMS:
        try:
            return net.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError(
        f"cannot find the final norm of {type(net).__name__} (looked for "
        f"{', '.join(FINAL_NORMS)}): no logit lens for this model"
    )


def decoder_directions(sae, latents: list[int]) -> torch.Tensor:
    """Decoder rows [len(latents), width_out] in the model's units (expected_norm: divided by
    s, a transcoder's by s_out; per_token decodes with each token's own std, which does not
    change a direction)."""
    rows = sae.W_dec.detach().float()[latents]
    if sae.cfg.input_scaling != "expected_norm":
        return rows
    return rows / (sae.output_scale if sae.cfg.is_transcoder else sae.input_scale).float()


@torch.inference_mode()
def lens_logits(sae, lm, latents: list[int]) -> torch.Tensor:
    """[len(latents), vocab]: the logits each latent's decoder direction adds (through the
    final norm and the unembedding, relative to a zero residual)."""
    net = lm.model
    head = net.get_output_embeddings()
    if head is None or lm.d_model != sae.cfg.width_out:
        raise ValueError("the logit lens needs the causal LM the SAE was trained on")
    norm = final_norm(net)
    device = next(net.parameters()).device
    dirs = decoder_directions(sae, latents).to(device)
    zero = head(norm(torch.zeros_like(dirs[:1, None])))
    return (head(norm(dirs[:, None])) - zero).squeeze(1).float().cpu()


def logit_lens_ids(sae, lm, latents: list[int], k: int = 10) -> list[list[int]]:
    """Per latent, the ids of the k tokens its decoder direction promotes most."""
    return [row.topk(k).indices.tolist() for row in lens_logits(sae, lm, latents)]


def logit_lens(sae, lm, latents: list[int], k: int = 10) -> list[dict]:
    """Per latent {"top": [(token text, logit)] * k, "bottom": [...]}: the tokens its decoder
    direction promotes most and least."""
    out = []
    for row in lens_logits(sae, lm, latents):
        top, bottom = row.topk(k), (-row).topk(k)
        out.append(
            {
                "top": [
                    (lm.tokenizer.decode([int(i)]), float(v))
                    for v, i in zip(top.values, top.indices)
                ],
                "bottom": [
                    (lm.tokenizer.decode([int(i)]), -float(v))
                    for v, i in zip(bottom.values, bottom.indices)
                ],
            }
        )
    return out
