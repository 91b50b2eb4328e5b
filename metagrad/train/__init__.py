"""Meta-training on sinusoid regression (Finn, Abbeel & Levine 2017, §5.1): the
``metagrad train`` application.

* :mod:`.config`: :class:`TrainConfig`, every setting and its default;
* :mod:`.loop`: :func:`train`, the loop with logs, snapshots, probes and exact resume;
* :mod:`.baseline`: the joint-training baseline; :mod:`.evaluation`: held-out MSE per task;
* :mod:`.probe`: the meta-gradient against the exact ones during training;
* :mod:`.snapshot`: crash-safe, digest-checked snapshots;
* :mod:`.outdir`: the output folder (checked, locked, marked; strict JSON);
* :mod:`.ranks`: the processes of a run under torchrun (rank 0 writes, errors shared);
* :mod:`.study`: several seeds, tuning on validation tasks, regimes, matched cost;
* :mod:`.stats`: intervals across seeds, tasks and paired differences;
* :mod:`.aggregate`: a study's tables; :mod:`.status`: a run's status in tables;
* :mod:`.finn2017`, :mod:`.finn2017_report`: Finn et al.'s protocol and its comparison
  with the published numbers;
* :mod:`.plots`: figures; :mod:`.command`: the CLI; :mod:`.section`: the report section.
"""

from .baseline import BaselineResult, train_baseline
from .config import TrainConfig, make_method, make_model
from .evaluation import adaptation_curve, adaptation_losses
from .loop import FILES, TrainingDiverged, TrainResult, log_columns, read_log, train
from .snapshot import SnapshotError

__all__ = ["FILES", "BaselineResult", "SnapshotError", "TrainConfig", "TrainResult",
           "TrainingDiverged", "adaptation_curve", "adaptation_losses", "log_columns",
           "make_method", "make_model", "read_log", "train", "train_baseline"]
