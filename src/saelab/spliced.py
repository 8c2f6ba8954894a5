"""The SAE inside the model: `with spliced(lm, sae) as run:` runs any forward pass of the model,
`lm.model(ids)` or `lm.model.generate(...)`, with each SAE's reconstruction in place of the
activation at its hook point (a transcoder's prediction from its input at its target), and
lets the codes be read and edited before they are decoded.

At a hook point with activation a [batch, seq, d] (a transcoder: x at its input, a at its
target) and codes f = encode(x):
    out = decode(edit(f))                          error_term False
    out = decode(edit(f)) + (a - decode(f))        error_term True: without edits, out = a
The error term a - decode(f) passes gradients through to a, or is held constant
(freeze_error). With leaves=True the codes and the error term of each pass are leaves of the
autograd graph (run.codes, run.errors, requiring grad), for attribution by activation x
gradient (attribution.py). Position 0 of a sequence (BOS) keeps its activation, as in the downstream
evaluation; positions are counted across the calls of a generation with a KV cache.
run.codes holds the last pass's codes f [batch, seq, d_sae] (a list, one per SAE, for several);
run.set / scale / add / ablate edit them at chosen positions (absolute, from 0) until
run.clear().
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from .checks import check_type
from .data.hooks import HookPoint, _hf_model, splice, splice_point, splice_transcoder
from .errors import ArgumentError
from .eval.downstream import recorded_point, transcoder_target
from .sae.model import SAE


@dataclass
class Edit:
    """codes[..., latents] <- op(codes[..., latents], value) at `positions` (None: all)."""

    latents: list[int]
    op: str  # "set", "scale" or "add"
    value: float
    positions: list[int] | None


@dataclass
class SplicedSAE:
    """One SAE in the model: where it reads and writes, its last codes and its edits."""

    sae: SAE
    source: HookPoint
    target: HookPoint
    codes: torch.Tensor | None = None
    error: torch.Tensor | None = None
    edits: list[Edit] = field(default_factory=list)


class SplicedRun:
    """The state of a spliced model (see the module docstring)."""

    def __init__(
        self, spliced: list[SplicedSAE], error_term: bool, freeze_error: bool, leaves: bool
    ):
        self.spliced, self.error_term, self.freeze_error = spliced, error_term, freeze_error
        self.leaves = leaves
        self.offset = 0  # the absolute position of the current pass's first token

    @property
    def codes(self) -> torch.Tensor | list[torch.Tensor | None] | None:
        """The last forward pass's codes [batch, seq, d_sae] (one per SAE for several)."""
        codes = [s.codes for s in self.spliced]
        return codes[0] if len(codes) == 1 else codes

    @property
    def errors(self) -> torch.Tensor | list[torch.Tensor | None] | None:
        """The last forward pass's error terms a - decode(f) [batch, seq, d] (with error_term)."""
        errors = [s.error for s in self.spliced]
        return errors[0] if len(errors) == 1 else errors

    # -- interventions ---------------------------------------------------------------------
    def set(self, latent, value: float, positions=None, sae: int = 0) -> None:
        """Set latent(s) to `value` at `positions`."""
        self._edit(latent, "set", value, positions, sae)

    def scale(self, latent, factor: float, positions=None, sae: int = 0) -> None:
        """Multiply latent(s) by `factor` at `positions`."""
        self._edit(latent, "scale", factor, positions, sae)

    def add(self, latent, amount: float, positions=None, sae: int = 0) -> None:
        """Add `amount` to latent(s): `amount` times its decoder direction in the output."""
        self._edit(latent, "add", amount, positions, sae)

    def ablate(self, latents, positions=None, sae: int = 0) -> None:
        """Zero latent(s) at `positions`."""
        self._edit(latents, "set", 0.0, positions, sae)

    def clear(self) -> None:
        for s in self.spliced:
            s.edits.clear()

    def _edit(self, latents, op: str, value, positions, sae: int) -> None:
        if not isinstance(sae, int) or not 0 <= sae < len(self.spliced):
            raise ArgumentError(f"sae={sae!r}: this run splices {len(self.spliced)} SAE(s)")
        target = self.spliced[sae]
        latents = [latents] if isinstance(latents, int) else list(latents)
        d_sae = target.sae.cfg.d_sae
        bad = [i for i in latents if not isinstance(i, int) or not 0 <= i < d_sae]
        if bad or not latents:
            raise ArgumentError(
                f"latent(s) {bad or latents} out of range: the SAE has d_sae={d_sae} "
                f"(0..{d_sae - 1})"
            )
        check_type("value", value, (int, float), "a number")
        if positions is not None:
            positions = [positions] if isinstance(positions, int) else list(positions)
            if any(not isinstance(p, int) or p < 0 for p in positions):
                raise ArgumentError(f"positions must be token positions >= 0, got {positions}")
        target.edits.append(Edit(latents, op, float(value), positions))

    # -- the replacement -------------------------------------------------------------------
    def _edited(self, spliced: SplicedSAE, f: torch.Tensor) -> torch.Tensor:
        """f [batch, seq, d_sae] with the edits applied at their absolute positions."""
        if not spliced.edits:
            return f
        f = f.clone()
        here = torch.arange(self.offset, self.offset + f.shape[1], device=f.device)
        for edit in spliced.edits:
            at = (
                here
                if edit.positions is None
                else here[torch.isin(here, torch.tensor(edit.positions))]
            )
            rows = (at - self.offset)[:, None]
            latents = torch.tensor(edit.latents, device=f.device)
            old = f[:, rows, latents]
            f[:, rows, latents] = {
                "set": torch.full_like(old, edit.value),
                "scale": old * edit.value,
                "add": old + edit.value,
            }[edit.op]
        return f

    def replace(self, spliced: SplicedSAE, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The activation that goes on in place of a [batch, seq, d], from x (the SAE's input)."""
        sae = spliced.sae
        batch, seq, _ = x.shape
        flat = x.reshape(-1, sae.cfg.d_in).float()
        stats = sae.input_stats(flat)
        f = sae.encode(flat)
        spliced.codes = f.reshape(batch, seq, -1)
        if self.leaves:  # the codes as a leaf, decoded through a view of it
            spliced.codes = spliced.codes.detach().requires_grad_(True)
            f = spliced.codes.flatten(0, 1)
        skip = flat if sae.cfg.skip else None
        recon = sae.decode(f, stats, x=skip)
        edited = self._edited(spliced, spliced.codes)
        out = recon if edited is spliced.codes else sae.decode(edited.flatten(0, 1), stats, x=skip)
        out = out.reshape(batch, seq, -1)
        if self.error_term:
            error = a.float() - recon.reshape(batch, seq, -1)
            if self.leaves:
                error = error.detach().requires_grad_(True)
            spliced.error = error
            out = out + (error.detach() if self.freeze_error else error)
        out = out.to(a.dtype)
        if self.offset == 0:  # BOS keeps its activation
            out = torch.cat([a[:, :1], out[:, 1:]], dim=1)
        return out


def _offset(args, kwargs) -> int:
    """The absolute position of a forward pass's first token: its first position id, else the
    KV cache's length (transformers passes one or the other, by version)."""
    for key in ("position_ids", "cache_position"):
        value = kwargs.get(key)
        if value is not None and value.numel():
            return int(value.reshape(-1)[0])
    for key in ("past_key_values", "cache"):
        past = kwargs.get(key)
        if past is not None and hasattr(past, "get_seq_length"):
            return int(past.get_seq_length())
    return 0


@contextmanager
def spliced(
    lm, saes, error_term: bool = False, freeze_error: bool = False, leaves: bool = False
) -> Iterator[SplicedRun]:
    """Within the context, every forward pass of lm (a LanguageModel or a transformers causal
    LM) runs with each SAE of `saes` (one, or a list) spliced in at the hook point its metadata
    records (see the module docstring); yields the SplicedRun that holds codes and edits."""
    net = _hf_model(lm)
    saes = [saes] if isinstance(saes, SAE) else list(saes)
    if not saes:
        raise ArgumentError("spliced needs at least one SAE")
    for sae in saes:
        check_type("each SAE", sae, SAE, "a saelab.SAE")
    device = next(net.parameters()).device
    entries = []
    for sae in saes:
        source = recorded_point(sae)
        target = transcoder_target(sae) if sae.cfg.is_transcoder else source
        splice_point(net, target.layer, target.site)  # a clear error where it cannot go
        width = net.config.hidden_size
        for what, needed in (("d_in", sae.cfg.d_in), ("output width", sae.cfg.width_out)):
            if needed != width:
                raise ArgumentError(
                    f"the SAE has {what} {needed}, but {type(net).__name__}'s hook points have "
                    f"width {width}"
                )
        entries.append(SplicedSAE(sae.to(device).eval(), source, target))
    run = SplicedRun(entries, error_term, freeze_error, leaves)

    def track(module, args, kwargs):
        run.offset = _offset(args, kwargs)

    with ExitStack() as stack:
        handle = net.register_forward_pre_hook(track, with_kwargs=True)
        stack.callback(handle.remove)
        for entry in entries:
            if entry.sae.cfg.is_transcoder:
                fn = _transcoder_fn(run, entry)
                stack.enter_context(splice_transcoder(net, entry.source, entry.target, fn))
            else:
                fn = _sae_fn(run, entry)
                stack.enter_context(splice(net, entry.source.layer, entry.source.site, fn))
        yield run


def _sae_fn(run: SplicedRun, entry: SplicedSAE):
    return lambda a: run.replace(entry, a, a)


def _transcoder_fn(run: SplicedRun, entry: SplicedSAE):
    return lambda x, a: run.replace(entry, x, a)
