"""saelab: train and evaluate sparse autoencoders on language-model activations."""

__version__ = "0.1.0"

from .config import SAEConfig, TrainConfig  # noqa: E402
from .data.hooks import harvest  # noqa: E402
from .data.models import load_model  # noqa: E402
from .eval.afa import afa_stats  # noqa: E402
from .eval.downstream import downstream  # noqa: E402
from .eval.metrics import evaluate  # noqa: E402
from .sae import SAE  # noqa: E402
from .train.loop import TrainResult, train, train_many  # noqa: E402

__all__ = [
    "SAE",
    "SAEConfig",
    "TrainConfig",
    "TrainResult",
    "train",
    "train_many",
    "evaluate",
    "load_model",
    "harvest",
    "downstream",
    "afa_stats",
    "__version__",
]
