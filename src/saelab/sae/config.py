"""SAEConfig: what an SAE is. Its architecture's settings come from the architecture registry,
so this module sits above the architectures and below the SAE module."""

from __future__ import annotations

import dataclasses

from ..checks import check_choice, check_integer, check_number
from ..errors import ConfigError
from .architecture import setting_names
from .registry import ARCHITECTURES, architecture

INPUT_SCALINGS = ("none", "expected_norm", "per_token")
DEFAULT_INPUT_SCALING = "per_token"
TRANSCODER_INPUT_SCALING = "expected_norm"  # per_token is not defined for a target


class SAEConfig:
    """What an SAE is: architecture, sizes, input scaling, and the architecture's own settings
    as keywords (k, l1_coefficient, l0_coefficient, afa_coefficient, aux_k, ...: see each
    architecture's Settings in sae/). A keyword the architecture does not take is an error
    (None counts as not given). Settings read as attributes: cfg.k.

    input_scale: the scalar s of `expected_norm` (inputs are multiplied by s inside the SAE);
    estimated by the trainer, folded into the weights when the SAE is saved. output_scale: a
    transcoder's own s for its target (s_out^2 E||y||^2 = d_out), an autoencoder's is s.

    d_out: a transcoder's output width (its decoder writes [d_sae, d_out] onto another hook
    point, its encoder reads the input without subtracting b_dec); None: an autoencoder.
    skip: a transcoder's linear skip path W_skip [d_in, d_out] (Paulo et al. 2025).
    """

    def __init__(
        self,
        arch: str,
        d_in: int,
        d_sae: int,
        input_scaling: str | None = None,
        input_scale: float = 1.0,
        metadata: dict | None = None,
        d_out: int | None = None,
        skip: bool = False,
        output_scale: float = 1.0,
        **settings,
    ):
        spec = architecture(arch)
        self.arch, self.d_in, self.d_sae = arch, d_in, d_sae
        self.d_out, self.skip, self.output_scale = d_out, skip, output_scale
        if input_scaling is None:  # the default of an autoencoder, or of a transcoder
            input_scaling = DEFAULT_INPUT_SCALING if d_out is None else TRANSCODER_INPUT_SCALING
        self.input_scaling, self.input_scale = input_scaling, input_scale
        self.metadata = {} if metadata is None else metadata
        for name in ("d_in", "d_sae"):
            check_integer(name, getattr(self, name))
        check_choice("input_scaling", self.input_scaling, INPUT_SCALINGS)
        self._check_transcoder()
        check_number("input_scale", self.input_scale, strict=True)
        check_number("output_scale", self.output_scale, strict=True)
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"metadata must be a JSON object, got {type(self.metadata).__name__}")
        names = setting_names(spec.settings)
        given = {key: value for key, value in settings.items() if value is not None}
        wrong = sorted(set(given) - set(names))
        if wrong:
            raise ConfigError(
                f"{', '.join(wrong)} do(es) not apply to arch {arch!r} "
                f"(its settings: {', '.join(names) or 'none'})"
            )
        self.settings = spec.settings(**given)
        self._setting_names = frozenset(names)
        try:
            self.settings.check(d_sae)
        except ConfigError as err:
            raise ConfigError(f"arch {arch!r}: {err}") from None

    @property
    def is_transcoder(self) -> bool:
        return self.d_out is not None

    @property
    def width_out(self) -> int:
        """The decoder's width: d_out for a transcoder, d_in for an autoencoder."""
        return self.d_in if self.d_out is None else self.d_out

    def _check_transcoder(self) -> None:
        if self.d_out is not None:
            check_integer("d_out", self.d_out)
        if not isinstance(self.skip, bool):
            raise ConfigError(f"skip must be true or false, got {self.skip!r}")
        if self.skip and self.d_out is None:
            raise ConfigError(
                "skip adds a linear path from the input to another hook point: it needs d_out "
                "(a transcoder), not an autoencoder"
            )
        if self.d_out is None:
            if self.output_scale != 1.0:
                raise ConfigError(
                    "output_scale is a transcoder's target scale; an autoencoder's output "
                    "takes its input_scale"
                )
            return
        if self.input_scaling == "per_token":
            raise ConfigError(
                "transcoders take input_scaling expected_norm or none, not per_token (the "
                "target's own mean and std are not known at inference)"
            )
        if self.arch == "topafa":
            raise ConfigError(
                "topafa sizes each code to its input's norm, which a transcoder does not "
                "reconstruct: topafa transcoders are not supported"
            )

    def __getattr__(self, name: str):
        settings = self.__dict__.get("settings")
        if settings is not None and name in self.__dict__.get("_setting_names", ()):
            return getattr(settings, name)
        raise AttributeError(f"{self.__dict__.get('arch')} SAEs have no setting {name!r}")

    def get(self, name: str, default=None):
        """A setting's value, or `default` when the architecture has no such setting."""
        return getattr(self.settings, name, default)

    def __eq__(self, other) -> bool:
        return isinstance(other, SAEConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SAEConfig({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            **dataclasses.asdict(self.settings),
            "input_scaling": self.input_scaling,
            "input_scale": self.input_scale,
            **(
                {"d_out": self.d_out, "skip": self.skip, "output_scale": self.output_scale}
                if self.is_transcoder
                else {}
            ),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict, legacy: bool = False) -> SAEConfig:
        """The config of to_dict. legacy: a cfg.json of saelab 0.1, which wrote every
        architecture's settings: those the architecture does not take are dropped."""
        d = dict(d)
        if "arch" not in d:
            raise ConfigError("the config has no arch")
        common = {"arch", "d_in", "d_sae", "input_scaling", "input_scale", "metadata"}
        common |= {"d_out", "skip", "output_scale"}
        own = set(setting_names(architecture(d["arch"]).settings))
        known = {name for spec in ARCHITECTURES.values() for name in setting_names(spec.settings)}
        unknown = sorted(set(d) - common - known)
        if unknown:
            raise ConfigError(f"unknown SAEConfig field(s): {', '.join(unknown)}")
        if legacy:
            d = {key: value for key, value in d.items() if key in common or key in own}
        try:
            return cls(**d)
        except TypeError as err:
            raise ConfigError(str(err)) from None

    def replace(self, **changes) -> SAEConfig:
        return SAEConfig.from_dict({**self.to_dict(), **changes})
