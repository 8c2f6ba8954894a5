"""The SAE module: parameters, input scaling, encode/decode and the training loss.

pre = (x' - b_dec) @ W_enc + b_enc;  f = rule(pre);  x_hat' = f @ W_dec + b_dec
where x' is the scaled input: x' = s x (`expected_norm`), x' = (x - mean) / std per token
(`per_token`), or x' = x (`none`); outputs are mapped back to the units of x. Everything
particular to an architecture (the rule, its tensors and loss terms) comes from `self.arch`
(sae/architecture.py); the module holds what all share.

A transcoder (cfg.d_out set) predicts another hook point y [.., d_out] from x:
pre = x' @ W_enc + b_enc (no input shift);  y_hat' = f @ W_dec + b_dec (+ x' @ W_skip with
skip), W_dec [d_sae, d_out], where x' = s x and y' = s_out y under `expected_norm` (each scaled
to norm ~sqrt(width) by its own s) and y_hat = y_hat' / s_out; it trains on batches
[n, d_in + d_out] of x and y side by side (split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checks import check_type
from ..errors import ArgumentError, ConfigError, DataError
from ..io import hub, releases
from ..io.external import read_any
from ..io.format import (
    WEIGHTS_NAME,
    SAEFormatError,
    check_sizes,
    check_tensors,
    folded,
    read_config,
    read_weights,
    save_sae,
)
from ..io.jsonfile import is_kind
from . import auxk
from . import sparse as sparse_code
from .architecture import Collectives
from .config import SAEConfig
from .registry import architecture
from .shard import LatentShard, check_shardable

PER_TOKEN_EPS = 1e-5


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable
    terms: dict[str, torch.Tensor]  # each weighted term, detached
    fired: torch.Tensor  # [n_latents] bool: its latents active on some token of the batch
    l0: torch.Tensor  # scalar: mean active latents per token
    code: object  # the codes, detached: a SparseCode on the sparse path, else dense [n, d_sae]
    prediction: torch.Tensor  # x_hat' (a transcoder's y_hat') [n, width_out], scaled, detached


class SAE(nn.Module):
    """A sparse autoencoder. Training mode has training semantics (batch top-k for batchtopk),
    eval mode inference semantics (codes independent of the batch)."""

    def __init__(
        self,
        cfg: SAEConfig | dict,
        seed: int | None = None,
        shard: LatentShard | None = None,
        initialise: bool = True,
    ):
        """cfg: an SAEConfig or a dict of its fields (SAEConfig.from_dict); seed: an int for a
        reproducible initialisation, None for torch's global generator; shard: only these
        latents of the dictionary (sae/shard.py; the trainer makes them under torchrun with
        latent_parallel), initialised as the whole SAE's with the same seed; initialise=False:
        W_enc and W_dec are not drawn nor allocated (meta tensors) until adopt() fills them, so
        loading never holds a dictionary twice."""
        super().__init__()
        check_type("cfg", cfg, (SAEConfig, dict), "an SAEConfig or a dict of its fields")
        check_type("seed", seed, (int, type(None)), "an integer or None")
        cfg = SAEConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        self.cfg = cfg
        self.arch = architecture(cfg.arch)
        self.collectives = Collectives()  # the trainer sets torch.distributed's under torchrun
        self.shard = shard or LatentShard(0, cfg.d_sae)
        if not self.shard.whole:
            check_shardable(self)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if initialise:
            W_enc, W_dec = self.arch.initial_weights(cfg, generator, self.shard.latents)
        else:
            W_enc = torch.empty(cfg.d_in, self.shard.width, device="meta")
            W_dec = torch.empty(self.shard.width, cfg.width_out, device="meta")
        self.W_enc = nn.Parameter(W_enc.contiguous())  # fused Adam wants it so
        self.register_parameter(self.arch.encoder_bias, nn.Parameter(torch.zeros(self.shard.width)))
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(torch.zeros(cfg.width_out))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(cfg.d_in, cfg.width_out))
        if cfg.is_transcoder:  # the encoder reads x itself: a shift of zeros, not saved
            self.register_buffer("_no_shift", torch.zeros(cfg.d_in), persistent=False)
        self.register_buffer("input_scale", torch.tensor(float(cfg.input_scale)))
        if cfg.is_transcoder:
            self.register_buffer("output_scale", torch.tensor(float(cfg.output_scale)))
        self.arch.add_state(self)
        self.initialized = False  # set once b_dec and the input scale come from data (or a file)

    @property
    def encoder_bias(self) -> nn.Parameter:
        return getattr(self, self.arch.encoder_bias)

    @property
    def n_latents(self) -> int:
        """The latents this module holds: d_sae, or its shard's share."""
        return self.shard.width

    @property
    def input_shift(self) -> torch.Tensor:
        """What the encoder subtracts from the scaled input: b_dec, or zeros for a transcoder."""
        return self._no_shift if self.cfg.is_transcoder else self.b_dec

    @property
    def batch_width(self) -> int:
        """The width of a training batch: d_in, or d_in + d_out for a transcoder's (x, y)."""
        return self.cfg.d_in + (self.cfg.d_out or 0)

    @property
    def takes(self) -> str:
        """What a batch of this SAE holds, for errors about data of the wrong width."""
        cfg = self.cfg
        if not cfg.is_transcoder:
            return f"has d_in={cfg.d_in}"
        return (
            f"is a transcoder: it takes x and y side by side, d_in + d_out = {cfg.d_in} + "
            f"{cfg.d_out} = {self.batch_width}"
        )

    def predict(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The output [n, width_out] from input rows x [n, d_in] and their codes f."""
        return self.decode(f, self.input_stats(x), x=x if self.cfg.skip else None)

    def split(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target) of a batch [n, batch_width]: (x, x) for an autoencoder, (x, y) for a
        transcoder."""
        if not self.cfg.is_transcoder:
            return batch, batch
        x, y = batch.split([self.cfg.d_in, self.cfg.d_out], dim=-1)
        return x, y

    # -- input scaling -----------------------------------------------------------------------
    def input_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """(mult, shift) with x' = (x - shift) * mult; per token [..., 1] for `per_token`."""
        if self.cfg.input_scaling == "per_token":
            mean = x.mean(-1, keepdim=True)
            return 1 / (x.std(-1, keepdim=True) + PER_TOKEN_EPS), mean
        return self.input_scale, 0.0

    def _check_whole(self) -> None:
        if not self.shard.whole:
            raise ArgumentError(
                f"this module is shard {self.shard.index} of {self.shard.count} of a dictionary "
                "split over ranks: it only trains (sae.loss); load the finished SAE whole "
                "(SAE.load) to encode"
            )

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(f"activations must be a floating-point tensor [..., d_in], got {kind}")
        if x.shape[-1] != self.cfg.d_in:
            raise DataError(
                f"input has last dimension {x.shape[-1]} but this SAE has d_in={self.cfg.d_in}"
            )

    def _scale(self, x, stats):
        if self.cfg.input_scaling == "none":
            return x
        mult, shift = stats
        return (x - shift) * mult

    def _unscale(self, x_hat, stats):
        if self.cfg.input_scaling == "none":
            return x_hat
        mult, shift = stats
        return x_hat / mult + shift

    def unscale_output(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """An output in scaled units (x_hat' or y_hat', as LossOutput.prediction) in the units of
        x (a transcoder's y), for the rows x it was computed from."""
        stats = (self.output_scale, 0.0) if self.cfg.is_transcoder else self.input_stats(x)
        return self._unscale(out, stats)

    def scale_target(self, y: torch.Tensor) -> torch.Tensor:
        """A transcoder's target y in its scaled units y' = s_out y (expected_norm)."""
        return y * self.output_scale if self.cfg.input_scaling == "expected_norm" else y

    # -- the autoencoder ---------------------------------------------------------------------
    def pre_activation(self, x_scaled: torch.Tensor) -> torch.Tensor:
        """(x' - b_dec) @ W_enc + b_enc for x' [n, d_in] -> [n, d_sae], in one allocation
        (addmm); a transcoder's encoder subtracts nothing. A shard's [n, h_shard]."""
        return torch.addmm(
            self.encoder_bias, self.shard.shared(x_scaled - self.input_shift), self.W_enc
        )

    def _encode_scaled(self, x_scaled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.pre_activation(x_scaled)
        return self.arch.activate(self, pre, x_scaled), pre

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> dense codes [..., d_sae] (batchtopk in training mode: top n*k over
        all leading dimensions together)."""
        self._check_whole()
        self._check_input(x)
        flat = x.reshape(-1, self.cfg.d_in)
        f, _ = self._encode_scaled(self._scale(flat, self.input_stats(flat)))
        return f.reshape(*x.shape[:-1], self.cfg.d_sae)

    def decode(self, f: torch.Tensor, stats=None, x: torch.Tensor | None = None) -> torch.Tensor:
        """codes [..., d_sae] -> x_hat [..., d_in] in input units (a transcoder's y_hat
        [..., d_out]). `per_token` SAEs need the statistics of the input they reconstruct:
        `stats=sae.input_stats(x)`; a skip transcoder needs its input x [..., d_in]."""
        self._check_whole()
        if not isinstance(f, torch.Tensor) or f.shape[-1:] != (self.cfg.d_sae,):
            what = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise DataError(f"codes must be a tensor [..., d_sae={self.cfg.d_sae}], got {what}")
        if self.cfg.is_transcoder:
            out = f @ self.W_dec + self.b_dec
            if self.cfg.skip:
                if x is None:
                    raise ArgumentError(
                        "a skip transcoder's output needs its input: sae(x), or sae.decode(f, x=x)"
                    )
                self._check_input(x)
                out = out + self._scale(x, self.input_stats(x)) @ self.W_skip
            return self._unscale(out, (self.output_scale, 0.0))
        if stats is None:
            if self.cfg.input_scaling == "per_token":
                raise ArgumentError(
                    "a per_token SAE needs the input's statistics to decode: "
                    "use sae(x), or sae.decode(f, stats=sae.input_stats(x))"
                )
            stats = (self.input_scale, 0.0)
        return self._unscale(f @ self.W_dec + self.b_dec, stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., d_in] -> x_hat [..., d_in] (a transcoder's y_hat [..., d_out])."""
        self._check_whole()
        self._check_input(x)
        flat = x.reshape(-1, self.cfg.d_in)
        stats = self.input_stats(flat)
        f, _ = self._encode_scaled(self._scale(flat, stats))
        out = self.decode(f, stats, x=flat if self.cfg.skip else None)
        return out.reshape(*x.shape[:-1], self.cfg.width_out)

    # -- training ----------------------------------------------------------------------------
    def loss(
        self,
        x: torch.Tensor,
        dead: torch.Tensor | None = None,
        sparse: bool = True,
        target: torch.Tensor | None = None,
    ) -> LossOutput:
        """x [n, d_in]; dead [d_sae] bool; target [n, d_out]: a transcoder's y (an autoencoder's
        is x). Loss in scaled units, per token, summed over the output width: the
        architecture's reconstruction term (||y' - y_hat'||^2) + its penalty terms +
        aux_coefficient * L_aux where it uses AuxK, all times the architecture's loss_unit.
        sparse: architectures with a sparse selection train through sparse.py (same values and
        gradients as the dense reference path, without [n, d_sae] codes, pre-activations or
        dense backward products)."""
        self._check_input(x)
        if self.cfg.is_transcoder != (target is not None):
            raise ArgumentError(
                "a transcoder's loss needs its target [n, d_out]"
                if self.cfg.is_transcoder
                else "an autoencoder reconstructs its input: pass no target"
            )
        if target is not None and target.shape != (len(x), self.cfg.d_out):
            raise DataError(
                f"target must be [n={len(x)}, d_out={self.cfg.d_out}], got {tuple(target.shape)}"
            )
        x = self._scale(x, self.input_stats(x))
        y = x if target is None else self.scale_target(target)
        shard = self.shard
        skip = x @ self.W_skip if self.cfg.skip else None
        offset = self.b_dec if skip is None else skip + self.b_dec  # added to the decoded code
        arch = self.arch
        use_aux = arch.uses_auxk and dead is not None and self.cfg.aux_coefficient > 0
        if sparse and arch.select is not None:
            dead_idx, aux_k = auxk.dead_latents(self, dead) if use_aux else (None, 0)
            watch_k = min(aux_k, len(dead_idx)) if use_aux else 0
            pre = sparse_code.encoder_tiles(self, x, watch=dead_idx, watch_k=watch_k)
            shift = shard.shared(self.input_shift)
            code = sparse_code.select(
                *arch.select(self, pre, x), x, shift, self.W_enc, self.encoder_bias
            )
            f, x_hat = code, shard.sum(sparse_code.decode(code, self.W_dec)) + offset
            fired = torch.zeros(self.n_latents, dtype=torch.bool, device=x.device).index_fill_(
                0, code.cols, True
            )
            l0 = shard.sum(torch.tensor(float(len(code.values)), device=x.device)) / len(x)
            detached = sparse_code.SparseCode(code.rows, code.cols, code.values.detach(), code.n)
            aux = (
                auxk.aux_loss_sparse(
                    self, x, y, x_hat, pre.watched, aux_k, arch.detach_aux_residual(self)
                )
                if use_aux
                else None
            )
        else:
            if not shard.whole and arch.select is not None:
                raise ArgumentError(
                    f"a {arch.name} dictionary split over ranks trains through the sparse path "
                    "(sparse=True): its dense reference path selects within one shard"
                )
            f, pre = self._encode_scaled(x)
            x_hat = shard.sum(f @ self.W_dec) + offset
            fired, l0 = (f > 0).any(0), shard.sum((f > 0).sum(-1).float()).mean()
            detached = f.detach()
            aux = (
                auxk.aux_loss(self, y, x_hat, pre, dead, arch.detach_aux_residual(self))
                if use_aux
                else None
            )
        terms = {"mse": arch.reconstruction(self, y, f, x_hat)}
        coded = y if skip is None else y - skip.detach()  # what the code itself reconstructs
        terms.update({name: shard.sum(t) for name, t in arch.penalty(self, f, pre, coded).items()})
        if aux is not None:
            terms["aux"] = self.cfg.aux_coefficient * aux
        unit = arch.loss_unit(self)
        if unit != 1:
            terms = {name: unit * term for name, term in terms.items()}
        loss = sum(terms.values())
        return LossOutput(
            loss,
            {name: t.detach() for name, t in terms.items()},
            fired,
            l0,
            detached,
            x_hat.detach(),
        )

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale each decoder row to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """W_dec.grad_i -= <grad_i, w_i> w_i for unit rows w_i, so a step keeps norms ~ 1."""
        if self.W_dec.grad is not None:  # in place, without a [d_sae, d_in] temporary
            parallel = torch.linalg.vecdot(self.W_dec.grad, self.W_dec)
            self.W_dec.grad.addcmul_(parallel[:, None], self.W_dec, value=-1)

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the SAE directory: cfg.json + sae.safetensors (io/format.py)."""
        save_sae(self, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SAE:
        """An SAE from a directory that save() wrote."""
        check_type("path", path, (str, Path), "a directory path")
        path = Path(path)
        if not path.is_dir():
            raise SAEFormatError(f"no SAE directory at {path}")
        weights = path / WEIGHTS_NAME
        return cls.from_file(read_config(path), read_weights(path), weights).to(device)

    @classmethod
    def load_any(cls, path: str | Path, device: str | torch.device = "cpu") -> SAE:
        """An SAE from a local directory (or OpenAI .pt file) in any layout io/external.py
        reads: saelab, SAELens, sparsify, dictionary_learning, Gemma Scope, Llama Scope,
        Llamascopium, OpenAI."""
        check_type("path", path, (str, Path), "a directory path")
        return cls.from_file(*read_any(path)).to(device)

    @classmethod
    def from_pretrained(
        cls,
        repo_or_path: str,
        sae_id: str | None = None,
        revision: str | None = None,
        device: str | torch.device = "cpu",
    ) -> SAE:
        """An SAE from a release by name ("gemma-scope-2b-pt-res-canonical", with its sae_id:
        `saelab releases`), a Hugging Face Hub repo ("org/name", a folder `sae_id` in it; or
        "hf://org/name/sae_id") or a local directory, in any layout load_any reads. A release's
        repo, folder, model, layer and site are recorded in cfg.metadata."""
        if repo_or_path in releases.RELEASES:
            repo_id, folder, recorded = releases.resolve(repo_or_path, sae_id)
            sae = cls.load_any(hub.download(repo_id, folder, revision), device)
            sae.cfg.metadata.update(recorded, repo_id=repo_id, folder=folder)
            return sae
        return cls.load_any(hub.resolve(repo_or_path, sae_id, revision), device)

    def push_to_hub(
        self,
        repo_id: str,
        sae_id: str | None = None,
        private: bool = False,
        run: str | Path | None = None,
        api=None,
    ) -> str:
        """Upload this SAE (with a model card, and from `run` its evaluation and plots) to the
        Hub repo `repo_id`, into folder `sae_id` if given; returns the commit URL (io/hub.py)."""
        return hub.push_to_hub(self, repo_id, sae_id, private, run, api)

    @classmethod
    def from_file(cls, cfg: SAEConfig, tensors: dict[str, torch.Tensor], path: Path) -> SAE:
        """An SAE in eval mode from file-layout tensors (checked against cfg first)."""
        keys = ["folded_input_scale"] + (["folded_output_scale"] if cfg.is_transcoder else [])
        scales = [cfg.metadata.get(key, 1.0) for key in keys]
        if cfg.input_scaling != "expected_norm":
            scales = [1.0 for _ in keys]
        for key, value in zip(keys, scales):
            if not (is_kind(value, float) and math.isfinite(value) and value > 0):
                raise SAEFormatError(
                    f"{path}: metadata.{key} must be a positive number, got {value}"
                )
        s, s_out = scales[0], scales[-1]
        unfold = scales != [1.0 for _ in keys]
        if unfold:  # the scales back into the SAE, the tensors in its scaled units
            metadata = {key: value for key, value in cfg.metadata.items() if key not in keys}
            outputs = {"output_scale": s_out} if cfg.is_transcoder else {}
            cfg = cfg.replace(input_scale=s, metadata=metadata, **outputs)
        check_sizes(tensors, cfg, path)
        sae = cls(cfg, initialise=False)
        check_tensors(tensors, sae, path)
        if unfold:
            tensors = folded(tensors, 1 / s, 1 / s_out)
        try:
            state = sae.arch.from_file(tensors)
        except ConfigError as err:
            raise SAEFormatError(f"{path}: {err}") from None
        return sae.adopt({**sae.state_dict(), **state}).eval()

    def adopt(self, state: dict[str, torch.Tensor]) -> SAE:
        """Take `state` (every key of state_dict()) as this SAE's tensors, each cast to the dtype
        it replaces and made contiguous, without copying a tensor that already is
        (load_state_dict(assign=True)); marks the SAE initialised. The way to fill an SAE made
        with initialise=False."""
        own = self.state_dict()
        self.load_state_dict(
            {
                name: t.to(own[name].dtype).contiguous() if name in own else t
                for name, t in state.items()
            },
            assign=True,
        )
        self.initialized = True
        return self
