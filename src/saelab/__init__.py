"""saelab: train and evaluate sparse autoencoders on language-model activations."""

from .config import DataConfig, SAEConfig, TrainConfig
from .data.hooks import HookPoint, harvest, harvest_many
from .data.models import load_model
from .eval.afa import afa_stats
from .eval.downstream import downstream
from .eval.metrics import evaluate
from .sae import SAE
from .spliced import spliced
from .train.loop import TrainResult, train, train_many
from .version import __version__

__all__ = [
    "SAE",
    "SAEConfig",
    "TrainConfig",
    "DataConfig",
    "TrainResult",
    "train",
    "train_many",
    "evaluate",
    "load_model",
    "harvest",
    "harvest_many",
    "HookPoint",
    "downstream",
    "afa_stats",
    "spliced",
    "__version__",
]
