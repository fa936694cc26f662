"""Training a TransformerLM on token files: `train(TrainConfig(...)) -> TrainResult`.

config.py   the settings (also the `minlm train` command line)
data.py     token files (memory-mapped, checked) and batch sampling
trainer.py  the loop: accumulation, clipping, schedule, validation, checkpoints, resumption
metrics.py  metrics.jsonl, loss.png, the summary
interrupt.py  Ctrl-C / SIGTERM -> save and stop
"""

from NLM.min_lm.training.config import TrainConfig
from NLM.min_lm.training.metrics import TrainResult
from NLM.min_lm.training.trainer import TrainingDiverged, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train"]
