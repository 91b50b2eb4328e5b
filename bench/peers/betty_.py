"""betty 0.2.1 (Choe et al. 2023, "Betty: An Automatic Differentiation Library for
Multilevel Optimization"): audit adapters; not in the timed sinusoid table.

betty runs whole training loops: ``Problem`` subclasses (an outer and an inner one) wired
into an ``Engine``, whose ``run()`` steps the inner problem and, every ``unroll_steps``
inner steps, the outer one. It has no call that returns one meta-gradient for a given θ
and meta-batch, so the audit target builds the two problems the way betty's own iMAML
example does (examples/implicit_maml/main.py in its repository) and runs ONE outer step:

* ``Inner(ImplicitProblem)``: module φ (a copy of θ), ``torch.optim.SGD(lr=inner_lr)``,
  ``training_step = L_tr(φ) + λ/2‖φ − θ‖²`` with θ read from the outer problem, and
  ``on_inner_loop_start`` loading θ into φ, so each task starts from φ = θ;
  ``Config(type="cg" | "neumann", unroll_steps=steps, ...)``.
* ``Outer(ImplicitProblem)``: module θ, ``training_step = L_val(φ)``, and
  ``Config(gradient_accumulation=T, retain_graph=True)``: betty divides each task's loss
  by T and accumulates the T hypergradients in ``θ.grad`` (problems/problem.py:510, 583-597),
  stepping the optimizer on the T-th task (problem.py:356-367). Its
  ``custom_optimizer_step`` hook (problems/implicit_problem.py:41-44), which replaces the
  optimizer step, records ``θ.grad`` (the mean meta-gradient) and does not move θ.
* The ``Engine`` runs ``steps × T`` global steps; task i is served to both problems
  during global steps i·K+1 … (i+1)·K.

What betty computes (betty 0.2.1 source, betty/...):

* The inner problem takes ``steps`` plain optimizer steps on its training loss
  (problem.py:334-367, gradient without graph since the outer's ``first_order=True``,
  problem.py:123-127, 348), so φ_K is metagrad's K proximal GD steps from θ
  (``torch.optim.SGD``: φ − lr·∇(L_tr + λ/2‖φ − θ‖²)).
* The outer step computes the direct gradient ∂L_val/∂θ (zero here: L_val depends on θ
  only through φ) and, because the outer ``Config.first_order`` is True (its default),
  the implicit part ``get_grads`` (problem.py:554-581): v = ∇_φ L_val(φ_K)
  (hypergradient/__init__.py:24-31), then the inner problem's ``config.type`` solver.
* θ enters betty's inner problem only through the inner loss: the copy φ ← θ at the
  loop start is not differentiated. So the proximal term is what makes the meta-gradient
  non-zero, and with it the inner Hessian is H(φ) + λI and ∂²F/∂θ∂φ = −λI:
  the hypergradient is −(∂∇_φF/∂θ)ᵀ x = λx with x ≈ (H + λI)⁻¹ v (hypergradient/
  cg.py:58-68, neumann.py:44-54). That is metagrad's implicit definition (I + H/λ)⁻¹ v at φ_K.
* ``"neumann"``: ``approx_inverse_hvp`` returns a·Σ_{j=0..J} (I − aA)ʲ v with A = H + λI,
  J = ``neumann_iterations``, a = ``neumann_alpha`` (hypergradient/neumann.py:59-66).
  With a = η/λ this is metagrad's Neumann (``terms=J``, ``step=η``) after the factor λ.
* ``"cg"`` (hypergradient/cg.py:34-56): x = 0, r = p = v; per iteration
  a_k = rᵀr / (c·pᵀAp), x += a_k p, r' = r − a_k A p, β = r'ᵀr'/rᵀr, **p' = r + βp**
  (cg.py:53: the OLD residual r, where conjugate gradient uses r'); finally x ← c·x
  with c = ``cg_alpha``. With c ≠ 1 the residual update (A p) and the step length (cA p)
  also disagree. We set c = 1, ``cg_iterations = cg_iters``. The first iteration is CG's;
  from the second on, the directions differ, so betty's "cg" is NOT m CG iterations for
  m ≥ 2, and it does not converge as m grows. betty's repository fixed line 53
  (``zip(r_new, p)``, commit 25bcb02, 2023-11-04) after its 0.2.1 tag; no release on PyPI
  carries the fix (0.2.1 is the latest).
* betty's own default type ``"darts"`` (used by its iMAML example) perturbs φ by ±εv and
  differences ∇_θF (hypergradient/darts.py:27-67): for the proximal inner loss this is
  exactly λv (the central difference of a quadratic), i.e. metagrad's Neumann with
  ``terms=0, step=λ`` (``AUDIT_VARIANTS["darts"]``).
* MAML / first-order MAML: betty's routes to differentiating through the unrolled inner
  loop fail in 0.2.1 before computing anything. ``IterativeProblem``: ``Engine(...)``
  raises ``KeyError: 'params'`` (``Problem.initialize`` already swapped in the patched
  optimizer, problem.py:204, whose param groups ``initialize_optimizer_state`` then
  indexes, problems/iterative_problem.py:64-67, 81-83). ``HigherIterativeProblem``: the
  first step raises higher's "Monkey-patching monkey-patched modules" ``ValueError``
  (the module is patched at initialisation, problem.py:203, and again at the loop start,
  iterative_problem_higher.py:116). Both also read ``self._fp16``, which nothing in betty
  sets (iterative_problem.py:74, iterative_problem_higher.py:55). And even working,
  θ → φ₀ is a ``load_state_dict`` copy, so no gradient would reach θ through the
  initialisation. betty therefore has no MAML or first-order MAML target.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from . import _audit

NAME = "betty"
CASES: dict = {}


def available() -> str | None:
    try:
        import betty  # noqa: F401
    except Exception as err:  # noqa: BLE001
        return f"{type(err).__name__}: {err}"
    return "not timed (Engine-only API); audit targets in bench/peers/betty_.py"


@contextlib.contextmanager
def _quiet_betty():
    """betty logs problem and engine information at INFO to stdout; keep the audit quiet."""
    from betty.logging.logger_base import get_logger

    log = get_logger()
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _hypergradient(loss, params, tasks, *, steps: int, inner_lr: float, lam: float,
                   config: dict) -> dict[str, torch.Tensor]:
    """One outer step of betty's Engine on the meta-batch; the mean meta-gradient."""
    from betty.configs import Config, EngineConfig
    from betty.engine import Engine
    from betty.problems import ImplicitProblem

    num_tasks = tasks.num_tasks
    current = {"task": 0}
    recorded: list[list[torch.Tensor]] = []

    class Outer(ImplicitProblem):
        def training_step(self, batch):
            return self.inner(batch)

        def get_batch(self):
            return tasks.task(current["task"])[1]

        def custom_optimizer_step(self, *args, **kwargs):
            # betty calls this instead of optimizer.step(); keep θ fixed, read θ.grad.
            recorded.append([p.grad.detach().clone() for p in self.trainable_parameters()])

    class Inner(ImplicitProblem):
        def training_step(self, batch):
            return self.module(batch) + _audit.proximal(self.trainable_parameters(),
                                                        self.outer.trainable_parameters(), lam)

        def get_batch(self):
            return tasks.task(current["task"])[0]

        def on_inner_loop_start(self):
            self.module.load_state_dict(self.outer.module.state_dict())

    class OneStepEngine(Engine):
        def train_step(self):
            current["task"] = (self.global_step - 1) // steps
            super().train_step()

    outer_module = _audit.ParamModule(loss, params)
    inner_module = _audit.ParamModule(loss, params)
    outer = Outer(name="outer", module=outer_module,
                  optimizer=torch.optim.SGD(outer_module.parameters(), lr=0.0),
                  config=Config(gradient_accumulation=num_tasks, retain_graph=True))
    inner = Inner(name="inner", module=inner_module,
                  optimizer=torch.optim.SGD(inner_module.parameters(), lr=inner_lr),
                  config=Config(unroll_steps=steps, **config))
    device = next(iter(params.values())).device
    with _quiet_betty():
        engine = OneStepEngine(
            problems=[outer, inner],
            config=EngineConfig(train_iters=steps * num_tasks, valid_step=10**9,
                                strategy="gpu" if device.type == "cuda" else "cpu"),
            dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}})
        engine.run()
    if len(recorded) != 1:
        raise RuntimeError(f"betty took {len(recorded)} outer steps, expected exactly 1")
    return dict(zip(list(params), recorded[0]))


def _factory(method: str, required: tuple[str, ...], optional: dict, to_config):
    def factory(**settings) -> _audit.Target:
        s = _audit.check_settings(f"betty {method}", settings, required, optional)
        if s["steps"] < 1:
            raise ValueError(f"betty {method}: steps must be >= 1 (betty's unroll_steps), "
                             f"got {s['steps']}")

        def target(loss, params, tasks):
            return _hypergradient(loss, params, tasks, steps=s["steps"], inner_lr=s["inner_lr"],
                                  lam=s["lam"], config=to_config(s))

        return target

    return factory


AUDIT_TARGETS = {
    # cg_alpha = 1: the only value for which betty's step length and residual agree.
    "imaml": _factory("imaml", ("steps", "inner_lr", "lam", "cg_iters"), {},
                      lambda s: {"type": "cg", "cg_iterations": s["cg_iters"],
                                 "cg_alpha": 1.0}),
    "neumann": _factory("neumann", ("steps", "inner_lr", "lam", "terms"), {"step": 1.0},
                        lambda s: {"type": "neumann", "neumann_iterations": s["terms"],
                                   "neumann_alpha": s["step"] / s["lam"]}),
}
AUDIT_VARIANTS = {
    # betty's default hypergradient; = metagrad Neumann(terms=0, step=lam) (docstring).
    "darts": _factory("darts", ("steps", "inner_lr", "lam"), {},
                      lambda s: {"type": "darts"}),
}
