"""The SAE module and its activation rules (one file per architecture)."""

from .batchtopk import ThresholdNotEstimated
from .model import SAE

__all__ = ["SAE", "ThresholdNotEstimated"]
