"""The registry of SAE architectures: adding one is a file in sae/ and a line here."""

from __future__ import annotations

from ..checks import by_name, check_choice
from .architecture import Architecture
from .batchtopk import BatchTopK
from .gated import Gated
from .jumprelu import JumpReLUArchitecture
from .matryoshka import Matryoshka
from .relu import ReLU
from .topafa import TopAFA
from .topk import TopK


def register(*architectures: Architecture) -> dict[str, Architecture]:
    """The architectures by name; a name given twice is an error."""
    return by_name(architectures, "architectures")


ARCHITECTURES = register(
    ReLU(),
    TopK(),
    BatchTopK(),
    JumpReLUArchitecture(),
    TopAFA(),
    Matryoshka(),
    Gated(),
)


def architecture(name: str) -> Architecture:
    check_choice("arch", name, ARCHITECTURES)
    return ARCHITECTURES[name]
