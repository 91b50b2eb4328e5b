"""Meta-training on sinusoid regression (Finn, Abbeel & Levine 2017, §5.1).

The training API (what this package exports):

* :class:`TrainConfig` (:mod:`.config`): every setting and its default, the method facts
  read off the method classes, and the inner-loop forms applied to the method
  (``inner``: learned per-entry or per-step rates, ANIL, momentum, Adam, the multi-step
  loss; learned rates are meta-parameters trained with θ);
* :func:`train` (:mod:`.loop`): the loop with logs, snapshots, probes and exact resume;
  :func:`train_baseline` (:mod:`.baseline`): the joint-training baseline;
  :func:`adaptation_curve` (:mod:`.evaluation`): held-out MSE after k adaptation steps
  (plain GD for every method; each run is also evaluated with its own adaptation).

Around it: :mod:`.snapshot` (crash-safe, digest-checked snapshots), :mod:`.outdir` (the
output folder: checked, locked, marked; strict JSON), :mod:`.ranks` (torchrun),
:mod:`.probe` (the meta-gradient against the exact ones during training), :mod:`.stats`
(intervals), :mod:`.status`, and the ``metagrad train`` application (:mod:`.command`,
:mod:`.plots`, :mod:`.section`).

The method comparison study and the Finn et al. 2017 reproduction sit apart, in
:mod:`metagrad.train.study` (the old module paths ``metagrad.train.aggregate``,
``.finn2017``, ``.finn2017_report`` and ``.steptime`` still import, with a
DeprecationWarning).
"""

from .baseline import BaselineResult, train_baseline
from .config import TrainConfig, make_method, make_model, train_defaults
from .evaluation import adaptation_curve, adaptation_losses
from .loop import FILES, TrainingDiverged, TrainResult, log_columns, read_log, train
from .snapshot import SnapshotError

__all__ = ["FILES", "BaselineResult", "SnapshotError", "TrainConfig", "TrainResult",
           "TrainingDiverged", "adaptation_curve", "adaptation_losses", "log_columns",
           "make_method", "make_model", "read_log", "train", "train_baseline", "train_defaults"]
