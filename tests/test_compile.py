"""mg.compile: the compiled path gives the eager numbers (and, in float64, the oracle's),
caches per input signature with a bounded cache, scales to many signatures in one process,
checks task data every call, and says what happened when it cannot compile.

The backend is ``aot_eager``: it traces exactly the graphs inductor would compile (dynamo,
functorch transforms, AOTAutograd) without minutes of C++ code generation on this CPU, so
what is checked is that the computation is traced correctly; inductor's kernels agree
with the eager ones to float rounding (``python -m metagrad_bench.compile_time`` and the
JAX comparison run the inductor path and report the agreement).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch._dynamo.testing
from helpers import rel, tanh_mlp_problem

import metagrad as mg
from metagrad import _pytree as pt
from metagrad.compiled import VERIFIED_TORCH, CompileFallbackWarning, signature
from metagrad.verify.compare import REF_RTOL, Case, evaluate

pytestmark = pytest.mark.skipif(not torch.__version__.startswith(VERIFIED_TORCH),
                                reason="mg.compile is verified on torch " + str(VERIFIED_TORCH))

METHODS = [
    mg.MAML(steps=3, inner_lr=0.1),
    mg.MAML(steps=4, inner_lr=0.1, backward="trajectory", checkpoint=3),
    mg.FOMAML(steps=3, inner_lr=0.1),
    mg.Reptile(steps=3, inner_lr=0.1),
    mg.IMAML(steps=3, inner_lr=0.1, lam=2.0, cg_iters=3),
    mg.Neumann(steps=3, inner_lr=0.05, lam=5.0, terms=3),
    mg.Penalty(steps=3, inner_lr=0.1, lam=0.1),
]


def counting(backend="aot_eager"):
    """A torch.compile backend that counts the graphs it is asked to compile."""
    return torch._dynamo.testing.CompileCounterWithBackend(backend)


def assert_same(a, b, tol=1e-12):
    assert rel(pt.flatten(a.grad), pt.flatten(b.grad)) < tol
    assert list(a.diagnostics) == list(b.diagnostics)
    for key in b.diagnostics:
        assert rel(a.diagnostics[key], b.diagnostics[key]) < tol, key
    assert math.isclose(float(a.post_update_loss), float(b.post_update_loss), rel_tol=tol)
    assert math.isclose(float(a.pre_update_loss), float(b.pre_update_loss), rel_tol=tol)


@pytest.mark.parametrize("loop", ["unrolled", "scan", "stepwise"])
@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.name}-{m.config()['steps']}")
def test_compiled_matches_eager(method, loop):
    loss, params, tasks = tanh_mlp_problem(tasks=3, sizes=(1, 4, 1))
    if loop != "unrolled" and method.config().get("checkpoint"):
        # The scanned sweep stores every iterate: a checkpointed trajectory stays unrolled.
        with pytest.raises(ValueError, match="checkpointed trajectory"):
            mg.compile(method, loop=loop)
        assert mg.compile(method).loop_form() == "unrolled"
        return
    compiled = mg.compile(method, backend="aot_eager", loop=loop)
    assert compiled.loop_form() == loop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mg.MetaGradientWarning)
        assert_same(compiled(loss, params, tasks), method(loss, params, tasks))
        # A cached call (no validation, no tracing) gives the same numbers on new tasks.
        other = mg.Sinusoid(shots=5, query=5).sample(3, seed=7, dtype=torch.float64)
        assert_same(compiled(loss, params, other), method(loss, params, other))
    assert len(compiled.compile_seconds) == 1


@pytest.mark.parametrize("method,problem,settings", [
    ("maml", "sinusoid_small", {"steps": 4, "inner_lr": 0.05}),
    ("imaml", "mlp_softplus", {"steps": 3, "inner_lr": 0.05, "lam": 5.0, "cg_iters": 2}),
    ("neumann", "linreg", {"steps": 2, "inner_lr": 0.02, "lam": 12.0, "terms": 3}),
    ("penalty", "softmax", {"steps": 3, "inner_lr": 0.1, "lam": 0.1}),
])
def test_compiled_against_the_oracle(method, problem, settings):
    # Level 1 (implementation exactness, float64) through the verification harness.
    case = Case.of(method, problem, meta_batch=3, **settings)
    compiled = mg.compile(case.build(), backend="aot_eager", loop="scan")
    row = evaluate(case, target=False, method=compiled)
    assert row["err_reference"] <= REF_RTOL and row["err_loss"] <= REF_RTOL
    assert row["passed"]


@pytest.mark.parametrize("form", ["per_entry", "per_step", "anil", "adam", "multistep"])
@pytest.mark.parametrize("method", ["maml", "fomaml"])
def test_compiled_inner_loop_variants_against_the_oracle(method, form):
    """Learned rates (their gradients too), partial adaptation, Adam and the multi-step loss
    through mg.compile, Level 1 against the oracle; the scanned form where the method can
    scan the variant, the unrolled one otherwise."""
    if mg._forms.inner_form(form).applies_to(mg.METHODS[method]):
        pytest.skip(f"{method} does not run {form}")
    case = Case.of(method, "mlp_softplus", inner=form, steps=3, inner_lr=0.05)
    built = case.build()
    loop = "scan" if built.scannable is None else "unrolled"
    compiled = mg.compile(built, backend="aot_eager", loop=loop)
    row = evaluate(case, target=False, fd=False, method=compiled)
    assert row["err_reference"] <= REF_RTOL and row["err_loss"] <= REF_RTOL
    assert row.get("err_hyper") is None or row["err_hyper"] <= REF_RTOL
    assert row["passed"]


def test_scan_traces_the_same_graph_for_every_K():
    # K identical inner steps are one scan loop whose body is traced once: what is traced
    # does not grow with K (the unrolled form traces K copies of the step).
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 4, 1))
    ops = {}
    for loop in ("scan", "unrolled"):
        for steps in (3, 8):
            backend = counting()
            compiled = mg.compile(mg.MAML(steps=steps, inner_lr=0.1), backend=backend, loop=loop)
            compiled(loss, params, tasks)
            compiled(loss, params, tasks)
            assert backend.frame_count == 1
            ops[loop, steps] = backend.op_count
    assert ops["scan", 3] == ops["scan", 8]
    assert ops["unrolled", 8] > 1.5 * ops["unrolled", 3]  # grows linearly with K
    auto = mg.compiled.SCAN_FROM
    assert mg.compile(mg.MAML(steps=auto, inner_lr=0.1)).loop_form() == "scan"
    assert mg.compile(mg.MAML(steps=auto - 1, inner_lr=0.1)).loop_form() == "unrolled"


def test_stepwise_compiles_the_same_pieces_for_every_K():
    # The stepwise form compiles one inner step (called K times) and the rest in pieces
    # (MAML: the sweep's start, step and finish): the same graphs whatever K.
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 4, 1))
    ops = {}
    for steps in (1, 3, 8):
        backend = counting()
        compiled = mg.compile(mg.MAML(steps=steps, inner_lr=0.1), backend=backend,
                              loop="stepwise")
        compiled(loss, params, tasks)
        compiled(loss, params, tasks)
        assert backend.frame_count == 4  # step, sweep start, sweep step, sweep finish
        ops[steps] = backend.op_count
    assert ops[1] == ops[3] == ops[8]


def test_many_signatures_in_one_process():
    # A sweep: 14 distinct compiled signatures (settings, meta-batch sizes, two losses).
    # torch.compile keeps compiled entries per code object, with a recompilation limit of
    # 8; before every signature got its own code object, the 9th signature failed.
    loss, params, _ = tanh_mlp_problem(tasks=2, sizes=(1, 3, 1))

    def other_loss(p, batch):  # another function: another signature
        x, y = batch
        return (torch.tanh(x @ p["0.weight"].T + p["0.bias"]) @ p["2.weight"].T
                + p["2.bias"] - y).abs().mean()
    backend = counting()
    calls = 0
    for steps in (1, 2):
        compiled = mg.compile(mg.FOMAML(steps=steps, inner_lr=0.1), backend=backend,
                              loop="unrolled")
        for meta_batch in (1, 2, 3, 4, 5, 6):
            tasks = mg.Sinusoid(shots=5, query=5).sample(meta_batch, seed=meta_batch,
                                                         dtype=torch.float64)
            for f in (loss, other_loss) if meta_batch == 1 else (loss,):
                out = compiled(f, params, tasks)
                calls += 1
                assert rel(pt.flatten(out.grad),
                           pt.flatten(compiled.method(f, params, tasks).grad)) < 1e-12
        assert len(compiled.compile_seconds) == 7
    assert calls == backend.frame_count == 14


def test_new_identical_loss_per_call_reuses_the_graph_and_the_cache_is_bounded():
    _, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 3, 1))
    model = mg.models.mlp((1, 3, 1), torch.nn.Tanh, dtype=torch.float64)

    def fresh_loss():  # a new closure every call: same code, same module
        return mg.module_loss(model, lambda a, b: ((a - b) ** 2).mean())

    backend = counting()
    compiled = mg.compile(mg.MAML(steps=1, inner_lr=0.1), backend=backend, cache_size=2)
    for _ in range(3):
        compiled(fresh_loss(), params, tasks)
    assert backend.frame_count == 1 and len(compiled.signatures) == 1
    for meta_batch in (1, 2, 3, 1):  # 2 is the meta-batch above, still cached
        tasks = mg.Sinusoid(shots=5, query=5).sample(meta_batch, seed=0, dtype=torch.float64)
        compiled(fresh_loss(), params, tasks)
    assert len(compiled.signatures) == 2  # least recently used evicted
    assert len(compiled.compile_seconds) == 2
    # meta-batch 1 was evicted by 3 (after 2 was used again), so it compiled again.
    assert backend.frame_count == 4


def test_signature_is_the_structure_not_the_values():
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 3, 1))
    shifted = {k: v + 1 for k, v in params.items()}
    assert signature(loss, params, tasks) == signature(loss, shifted, tasks.to(torch.float64))
    assert signature(loss, params, tasks) != signature(loss, pt.tree_map(
        lambda v: v.float(), params), tasks)
    assert signature(loss, params, tasks) != signature(lambda p, b: loss(p, b), params, tasks)
    assert signature(loss, [1], tasks) is None


def test_task_data_checked_every_call_without_recompiling():
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 3, 1))
    backend = counting()
    compiled = mg.compile(mg.FOMAML(steps=1, inner_lr=0.1), backend=backend)
    (x, y), val = tasks.train, tasks.val
    compiled(loss, params, mg.Task((x, y.clone()), val))
    bad = mg.Task((x, y.clone().index_fill_(1, torch.tensor([2]), float("nan"))), val)
    with pytest.raises(ValueError, match=r"tasks.train\[1\] contains NaN or infinite"):
        compiled(loss, params, bad)
    with pytest.raises(ValueError, match=r"tasks.train\[1\] contains NaN or infinite"):
        compiled.method(loss, params, bad)  # the eager method's message, word for word
    assert backend.frame_count == 1


def test_first_call_validates_like_the_eager_method():
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 3, 1))
    compiled = mg.compile(mg.MAML(steps=1, inner_lr=0.1), backend="aot_eager")
    with pytest.raises(TypeError, match="non-empty dict"):
        compiled(loss, [], tasks)
    with pytest.raises(ValueError, match="float32 but params are torch.float64"):
        compiled(loss, params, tasks.to(torch.float32))
    with pytest.raises(ValueError, match="must return a 0-dim scalar"):
        compiled(lambda p, b: b[1] * p["2.bias"], params, tasks)
    assert compiled.signatures == []


def untraceable_loss(params, batch):
    # Runs eagerly (under vmap too) but is not traceable as one graph: graph_break() stands
    # for any call dynamo cannot trace (an extension without a fake-tensor rule, I/O, ...).
    x, y = batch
    pred = torch.tanh(x @ params["w"]) @ params["a"]
    torch._dynamo.graph_break()
    return ((pred - y.squeeze(-1)) ** 2).mean()


def untraceable_problem():
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(1, 4, generator=gen, dtype=torch.float64),
              "a": torch.randn(4, generator=gen, dtype=torch.float64)}
    tasks = mg.Sinusoid(shots=5, query=5).sample(2, seed=0, dtype=torch.float64)
    return params, tasks


def test_untraceable_loss_raises_a_clear_error_or_falls_back_once():
    params, tasks = untraceable_problem()
    method = mg.FOMAML(steps=2, inner_lr=0.1)
    with pytest.raises(RuntimeError, match="could not trace fomaml's batched meta-gradient"):
        mg.compile(method, backend="aot_eager")(untraceable_loss, params, tasks)
    compiled = mg.compile(method, backend="aot_eager", fallback=True)
    with pytest.warns(CompileFallbackWarning, match="Running the eager method"):
        a = compiled(untraceable_loss, params, tasks)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # shown once, not per call
        b = compiled(untraceable_loss, params, tasks)
    ref = method(untraceable_loss, params, tasks)
    assert torch.equal(pt.flatten(a.grad), pt.flatten(ref.grad))
    assert torch.equal(pt.flatten(b.grad), pt.flatten(ref.grad))
    assert len(compiled.eager_signatures) == 1 and not compiled.compile_seconds


def test_forward_over_reverse_falls_back_with_the_reason():
    # torch 2.13's dynamo cannot trace torch.func.jvp through nn.functional.linear.
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 3, 1))
    method = mg.IMAML(steps=1, inner_lr=0.1, cg_iters=2, hvp="fwdrev")
    with pytest.raises(RuntimeError, match="hvp='revrev'"):
        mg.compile(method, backend="aot_eager")(loss, params, tasks)
    with pytest.warns(CompileFallbackWarning):
        out = mg.compile(method, backend="aot_eager", fallback=True)(loss, params, tasks)
    assert torch.equal(pt.flatten(out.grad), pt.flatten(method(loss, params, tasks).grad))


def test_recompiling_every_call_is_reported_as_such():
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 3, 1))
    compiled = mg.compile(mg.FOMAML(steps=1, inner_lr=0.1), backend="aot_eager")
    with torch._dynamo.config.patch(recompile_limit=2):
        with pytest.raises(RuntimeError, match="recompiled fomaml's meta-gradient"):
            for scale in range(1, 5):  # an int the loss closes over: one graph per value
                compiled(lambda p, b, s=scale: loss(p, b) * s, params, tasks)


def test_a_later_call_that_cannot_compile_falls_back_when_asked():
    # The first call of the signature compiles; later ones recompile (an int the loss
    # closes over) until the limit, then fallback=True runs them eagerly instead of raising.
    loss, params, tasks = tanh_mlp_problem(tasks=2, sizes=(1, 3, 1))
    method = mg.FOMAML(steps=1, inner_lr=0.1)
    compiled = mg.compile(method, backend="aot_eager", fallback=True)
    with torch._dynamo.config.patch(recompile_limit=2):
        with pytest.warns(CompileFallbackWarning, match="recompiled fomaml"):
            for scale in range(1, 5):
                scaled = (lambda p, b, s=scale: loss(p, b) * s)
                out = compiled(scaled, params, tasks)
                ref = method(scaled, params, tasks)
                assert rel(pt.flatten(out.grad), pt.flatten(ref.grad)) < 1e-12


def test_compile_rejects_bad_options():
    with pytest.raises(ValueError, match="batching='vmap'"):
        mg.compile(mg.MAML(steps=1, inner_lr=0.1, batching="loop"))
    with pytest.raises(ValueError, match="loop must be one of"):
        mg.compile(mg.MAML(steps=1, inner_lr=0.1), loop="stepped")
    with pytest.raises(ValueError, match="needs steps >= 2"):
        mg.compile(mg.MAML(steps=0, inner_lr=0.1), loop="scan")
    with pytest.raises(ValueError, match="cache_size must be a positive integer"):
        mg.compile(mg.MAML(steps=1, inner_lr=0.1), cache_size=0)
    with pytest.raises(TypeError, match="takes a metagrad method"):
        mg.compile(lambda: None)  # type: ignore[arg-type]
