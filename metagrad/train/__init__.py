"""Meta-training on sinusoid regression (Finn, Abbeel & Levine 2017, §5.1): the
``metagrad train`` application.

* :mod:`.config`: :class:`TrainConfig`, every setting and its default;
* :mod:`.loop`: :func:`train`, the loop with logs, snapshots and exact resume;
* :mod:`.baseline`: the joint-training baseline; :mod:`.evaluation`: held-out MSE;
* :mod:`.snapshot`: crash-safe, digest-checked snapshots;
* :mod:`.plots`: figures; :mod:`.command`: the CLI; :mod:`.section`: the report section.
"""

from .baseline import BaselineResult, train_baseline
from .config import TrainConfig, make_method, make_model
from .evaluation import adaptation_curve
from .loop import FILES, TrainingDiverged, TrainResult, log_columns, read_log, train
from .snapshot import SnapshotError

__all__ = ["FILES", "BaselineResult", "SnapshotError", "TrainConfig", "TrainResult",
           "TrainingDiverged", "adaptation_curve", "log_columns", "make_method", "make_model",
           "read_log", "train", "train_baseline"]
