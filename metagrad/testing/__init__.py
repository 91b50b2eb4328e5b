"""Check anyone's meta-gradient against the exact oracle, the way ``torch.autograd.gradcheck``
checks a gradient.

    from metagrad.testing import check_meta_gradient, assert_meta_gradient_close, gradcheck

    result = check_meta_gradient(my_imaml, "imaml", steps=3, inner_lr=0.1, lam=2.0, cg_iters=5)
    result.passed, result.table(), result.diagnosis
    assert_meta_gradient_close(my_maml, "maml", steps=2, inner_lr=0.1)   # in a pytest test
    gradcheck(mg.MAML(steps=2, inner_lr=0.1), loss, params, tasks)      # metagrad, your model

* :func:`check_meta_gradient`: a *target* ``target(loss, params, tasks) -> dict[str,
  Tensor]`` (or a factory ``factory(**settings) -> target``) claiming one method's mean
  meta-gradient, run on a battery of small problems (:mod:`.battery`) and compared with
  the dense float64 oracle and finite differences; failures are diagnosed against the
  usual wrong variants (:mod:`.diagnosis`).
* inner-loop variants (``inner="per_entry"``, ``"per_step"``, ``"momentum"``, ``"adam"``, …,
  :mod:`.variant`): the battery builds the rates on each problem and gives them to a factory;
  a target may return ``(grad, {"inner_lr": rate_gradients})``, and the rate-gradients are
  checked and their mistakes named too.
* :func:`assert_meta_gradient_close`: the same, raising ``AssertionError`` with the table.
* :func:`module_target`: code written against an ``nn.Module`` (``model(x) → logits →
  F.cross_entropy(logits, y)``), ``fn(model, tasks)``, audited on the battery's models
  (:mod:`.modules`); :class:`LossModule` wraps a functional loss as a module.
* :func:`gradcheck`: a metagrad method on the user's own loss, parameters and tasks.
* ``metagrad audit`` (:mod:`.command`): the same from the command line, for a callable
  ``package.module:name`` or a peer library ``peer:torchopt``.

The method definitions checked are those of docs/methods.md.
"""

from .check import (
    MAX_DIM,
    assert_meta_gradient_close,
    check_meta_gradient,
    gradcheck,
    is_factory,
    validate_settings,
)
from .modules import LossModule, ModuleTarget, ScalarTanh, ScaledTanh, module_target
from .result import AuditResult, CaseResult

__all__ = ["MAX_DIM", "AuditResult", "CaseResult", "LossModule", "ModuleTarget", "ScalarTanh",
           "ScaledTanh", "assert_meta_gradient_close", "check_meta_gradient", "gradcheck",
           "is_factory", "module_target", "validate_settings"]
