"""Training: the trainer (`Trainer`, `train`), loss terms, and a minimal loop for
synthetic checks (`fit`)."""

from .basic import fit, normalize_decoder_rows, project_decoder_grad
from .trainer import Trainer, TrainResult, train

__all__ = [
    "TrainResult",
    "Trainer",
    "fit",
    "normalize_decoder_rows",
    "project_decoder_grad",
    "train",
]
