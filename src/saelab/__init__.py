"""saelab: train and evaluate sparse autoencoders on language-model activations."""

__version__ = "0.1.0"

from .config import SAEConfig, TrainConfig  # noqa: E402
from .eval.metrics import evaluate  # noqa: E402
from .sae import SAE  # noqa: E402
from .train.loop import TrainResult, train  # noqa: E402

__all__ = ["SAE", "SAEConfig", "TrainConfig", "TrainResult", "train", "evaluate", "__version__"]
