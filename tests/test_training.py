"""Meta-training loop, snapshots and the ``metagrad train`` command.

The independent numbers here come from a hand-written float64 MLP, per-task
``torch.autograd`` loops and a hand-written Adam (Kingma & Ba 2015, Alg. 1),
never from metagrad's methods, inner loop or ``torch.func`` code paths.
Runs are tiny (hidden 16-16, a few meta-steps) so the file stays fast.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

import metagrad as mg
from metagrad import cli
from metagrad.methods import METHOD_NAMES
from metagrad.models import mlp
from metagrad.report.command import ReportContext
from metagrad.train import FILES, TrainConfig, read_log, train, train_baseline
from metagrad.train import command as train_cli
from metagrad.train import section as train_section
from metagrad.train import snapshot as snap

# float32 runs compared with float64 recomputations: each loss is a mean of ~10 squared
# errors of a 3-layer net; float32 rounding (eps ≈ 1.2e-7) through a few hundred flops per
# output and a handful of (meta-)steps stays far below 1e-5 relative. A wrong step size,
# wrong sign or a Hessian term dropped moves these numbers by ≥ 1e-3.
RTOL32 = 1e-5

SMALL = dict(meta_batch=4, hidden=(16, 16), heldout_tasks=6, heldout_query=7,
             snapshot_every=2, seed=3)


def small(method: str, **kw) -> TrainConfig:
    return TrainConfig(method=method, **{**SMALL, **kw})


# --------------------------------------------------------------------------------------------
# the independent reference: float64, plain autograd, per task


def init_params(cfg: TrainConfig) -> list[torch.Tensor]:
    model = mlp((1, *cfg.hidden, 1), seed=cfg.seed)
    return [p.detach().double().clone() for p in model.parameters()]


def forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    w1, b1, w2, b2, w3, b3 = params
    h = torch.relu(x @ w1.T + b1)
    h = torch.relu(h @ w2.T + b2)
    return h @ w3.T + b3


def mse(params, batch) -> torch.Tensor:
    x, y = batch
    return ((forward(params, x.double()) - y.double()) ** 2).mean()


def task_stream(cfg: TrainConfig):
    gen = torch.Generator().manual_seed(cfg.seed)
    family = mg.Sinusoid(shots=cfg.shots, query=cfg.query)
    while True:
        yield family.sample(cfg.meta_batch, generator=gen)


def ref_step(method: str, params, tasks, alpha: float):
    """Mean pre/post-update loss and the meta-direction g of MAML / FOMAML / Reptile for K = 1."""
    theta = [p.clone().requires_grad_(True) for p in params]
    pre = post = 0.0
    g_sum = [torch.zeros_like(p) for p in params]
    T = tasks.num_tasks
    for i in range(T):
        train_b, val_b = tasks.task(i)
        l_tr = mse(theta, train_b)
        g_tr = torch.autograd.grad(l_tr, theta, create_graph=(method == "maml"))
        phi = [t - alpha * g for t, g in zip(theta, g_tr, strict=True)]
        l_val = mse(phi, val_b)
        if method == "maml":
            g = torch.autograd.grad(l_val, theta)
        elif method == "fomaml":
            g = torch.autograd.grad(l_val, phi)
        else:  # reptile: θ − φ
            g = [alpha * gt.detach() for gt in g_tr]
        pre += float(l_tr.detach()) / T
        post += float(l_val.detach()) / T
        g_sum = [a + b.detach() / T for a, b in zip(g_sum, g, strict=True)]
    return pre, post, g_sum


class Adam:
    """θ ← θ − lr m̂ / (√v̂ + ε), Kingma & Ba 2015, Algorithm 1 (torch's default betas/eps)."""

    def __init__(self, lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t, self.m, self.v = lr, *betas, eps, 0, None, None

    def step(self, params, grads):
        if self.m is None:
            self.m = [torch.zeros_like(p) for p in params]
            self.v = [torch.zeros_like(p) for p in params]
        self.t += 1
        out = []
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            m_hat = self.m[i] / (1 - self.b1 ** self.t)
            v_hat = self.v[i] / (1 - self.b2 ** self.t)
            out.append(p - self.lr * m_hat / (v_hat.sqrt() + self.eps))
        return out


def ref_adaptation_curve(params, tasks, alpha: float, max_steps: int) -> list[float]:
    """Mean over tasks of L_val after k = 0 … max_steps plain GD steps on L_tr (float64)."""
    total = [0.0] * (max_steps + 1)
    for i in range(tasks.num_tasks):
        train_b, val_b = tasks.task(i)
        phi = [p.clone() for p in params]
        for k in range(max_steps + 1):
            total[k] += float(mse(phi, val_b)) / tasks.num_tasks
            if k < max_steps:
                leaves = [p.requires_grad_(True) for p in phi]
                grads = torch.autograd.grad(mse(leaves, train_b), leaves)
                phi = [(p - alpha * g).detach() for p, g in zip(leaves, grads, strict=True)]
    return total


def heldout(cfg: TrainConfig):
    return mg.Sinusoid(shots=cfg.shots, query=cfg.heldout_query).sample(
        cfg.heldout_tasks, seed=cfg.heldout_seed)


def final_params(out: Path) -> list[torch.Tensor]:
    state = snap.load_snapshot(out / FILES["snapshot"])["model"]
    return [state[k].double() for k in ("0.weight", "0.bias", "2.weight", "2.bias",
                                        "4.weight", "4.bias")]


# --------------------------------------------------------------------------------------------
# a short run: logged losses and the whole loop against the reference


@pytest.mark.parametrize("method", ["maml", "fomaml", "reptile"])
def test_logged_losses_and_params_follow_reference_loop(method, tmp_path):
    steps = 3
    cfg = small(method, meta_steps=steps)
    res = train(cfg, tmp_path, progress=False)
    log = read_log(tmp_path / FILES["log"])

    params, stream = init_params(cfg), task_stream(cfg)
    adam = Adam(1e-3)
    for step in range(steps):
        pre, post, g = ref_step(method, params, next(stream), cfg.inner_lr)
        assert log["pre_update_loss"][step] == pytest.approx(pre, rel=RTOL32)
        assert log["post_update_loss"][step] == pytest.approx(post, rel=RTOL32)
        if method == "reptile":  # θ ← θ + ε(φ − θ) = θ − ε g, ε = 1 by default
            params = [p - 1.0 * gi for p, gi in zip(params, g, strict=True)]
        else:
            params = adam.step(params, g)
    for got, want in zip(res.params.values(), params, strict=True):
        # Adam moves each coordinate by ~1e-3 per step; 1e-6 absolute is 0.1 % of a step.
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert list(log["meta_step"]) == [1, 2, 3]
    assert (log["step_time_s"] > 0).all() and log["wall_time_s"].is_monotonic_increasing


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_first_logged_losses_equal_initial_model_losses(method, tmp_path):
    # With K = 1 every method's first inner step starts at φ = θ (the proximal term of
    # IMAML/Neumann is zero there), so step 1 logs L_tr(θ₀) and L_val(θ₀ − α∇L_tr(θ₀)).
    cfg = small(method, meta_steps=1)
    train(cfg, tmp_path, progress=False)
    log = read_log(tmp_path / FILES["log"])
    pre, post, _ = ref_step("fomaml", init_params(cfg), next(task_stream(cfg)), cfg.inner_lr)
    assert log["pre_update_loss"][0] == pytest.approx(pre, rel=RTOL32)
    assert log["post_update_loss"][0] == pytest.approx(post, rel=RTOL32)


def test_output_files_and_summary_match_independent_evaluation(tmp_path):
    cfg = small("maml", meta_steps=4)
    res = train(cfg, tmp_path, progress=False)
    for key, name in FILES.items():
        if key != "probe":  # written only when probing (probe_at)
            assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads((tmp_path / FILES["summary"]).read_text())
    assert summary["method"] == "maml" and summary["meta_steps"] == 4
    assert summary == json.loads(json.dumps(res.summary))

    curve = ref_adaptation_curve(final_params(tmp_path), heldout(cfg), cfg.inner_lr, 10)
    held = summary["heldout"]
    # 10 float32 GD steps from the same parameters: rounding grows with each step (the
    # step map has Lipschitz constant 1 + α‖H‖ ≲ 1.4), still far inside 1e-4 relative.
    assert held["pre_update_mse"] == pytest.approx(curve[0], rel=RTOL32)
    for k in ("1", "5", "10"):
        assert held["post_update_mse"][k] == pytest.approx(curve[int(k)], rel=1e-4)

    # The baseline: Adam on the pooled MSE of the same task stream, then the same evaluation.
    params, adam = init_params(cfg), Adam(1e-3)
    for _, tasks in zip(range(cfg.meta_steps), task_stream(cfg), strict=False):
        x = torch.cat([tasks.train[0], tasks.val[0]], 1).reshape(-1, 1)
        y = torch.cat([tasks.train[1], tasks.val[1]], 1).reshape(-1, 1)
        leaves = [p.requires_grad_(True) for p in params]
        grads = torch.autograd.grad(mse(leaves, (x, y)), leaves)
        params = adam.step([p.detach() for p in leaves], grads)
    base = ref_adaptation_curve(params, heldout(cfg), cfg.inner_lr, 10)
    assert summary["baseline"]["pre_update_mse"] == pytest.approx(base[0], rel=1e-4)
    assert summary["baseline"]["post_update_mse"]["10"] == pytest.approx(base[10], rel=1e-4)

    preds = pd.read_csv(tmp_path / FILES["predictions"])
    true = preds[(preds.task == 0) & (preds.curve == "true")]
    h = heldout(cfg)
    amp, phase = float(h.info["amplitude"][0]), float(h.info["phase"][0])
    torch.testing.assert_close(torch.tensor(true.y.values),
                               amp * torch.sin(torch.tensor(true.x.values) - phase),
                               rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# exact resume and determinism


# Every method, and the inner-loop forms with learned rates (meta-parameters the snapshot
# must hold as well: Meta-SGD's per-entry rates, per-step rates with the multi-step loss,
# FOMAML's first-order rate-gradient).
RESUMED = [(m, ()) for m in METHOD_NAMES] + [
    ("maml", ("per_entry",)), ("maml", ("per_step", "multistep")), ("fomaml", ("per_entry",))]


@pytest.mark.parametrize("method, inner", RESUMED,
                         ids=[f"{m}{'+' if f else ''}{'+'.join(f)}" for m, f in RESUMED])
def test_resume_after_kill_is_bit_identical(method, inner, tmp_path):
    cfg = small(method, meta_steps=5, inner=inner, steps=2 if inner else 1)
    base = train_baseline(cfg)  # shared, so both runs compare only the meta-training
    whole = train(cfg, tmp_path / "whole", progress=False, baseline=base)

    killed = train(cfg, tmp_path / "split", progress=False, baseline=base, stop_after=3)
    assert not killed.finished
    # Killed after meta-step 3: the CSV holds 3 rows, the last snapshot is from meta-step 2.
    assert len(read_log(tmp_path / "split" / FILES["log"])) == 3
    assert snap.load_snapshot(tmp_path / "split" / FILES["snapshot"])["meta_step"] == 2
    resumed = train(cfg, tmp_path / "split", progress=False, baseline=base, resume=True)

    for k in whole.params:
        assert torch.equal(whole.params[k], resumed.params[k]), k
    assert set(whole.rates) == (set(whole.params) if inner else set())
    for k in whole.rates:
        assert torch.equal(whole.rates[k], resumed.rates[k]), k
    columns = [c for c in whole.log.columns if not c.endswith("_time_s")]
    pd.testing.assert_frame_equal(whole.log[columns], resumed.log[columns], check_exact=True)
    pd.testing.assert_frame_equal(read_log(tmp_path / "split" / FILES["log"])[columns],
                                  whole.log[columns], check_exact=True)
    assert whole.summary["heldout"] == resumed.summary["heldout"]

    # Same seed, fresh process state: bit-identical again (determinism on CPU).
    again = train(cfg, tmp_path / "again", progress=False, baseline=base)
    for k in whole.params:
        assert torch.equal(whole.params[k], again.params[k]), k
    for k in whole.rates:
        assert torch.equal(whole.rates[k], again.rates[k]), k


def test_resume_can_extend_a_finished_run(tmp_path):
    cfg = small("fomaml", meta_steps=4, snapshot_every=0)
    base = train_baseline(cfg)
    whole = train(cfg, tmp_path / "whole", progress=False, baseline=base)
    train(small("fomaml", meta_steps=2, snapshot_every=0), tmp_path / "two",
          progress=False, baseline=base)
    more = train(cfg, tmp_path / "two", progress=False, baseline=base, resume=True)
    for k in whole.params:
        assert torch.equal(whole.params[k], more.params[k]), k


# --------------------------------------------------------------------------------------------
# refusing bad snapshots


@pytest.fixture
def finished_run(tmp_path):
    cfg = small("imaml", meta_steps=2)
    train(cfg, tmp_path, progress=False)
    return cfg, tmp_path


@pytest.mark.parametrize("change, named", [
    (dict(method="fomaml"), "method: snapshot 'imaml', this run 'fomaml'"),
    (dict(lam=7.0), "config.lam: snapshot 300.0, this run 7.0"),
    (dict(seed=4), "config.seed"),
    (dict(hidden=(16, 8)), "shapes.2.weight: snapshot [16, 16], this run [8, 16]"),
])
def test_mismatched_snapshot_is_refused(finished_run, change, named):
    cfg, out = finished_run
    other = TrainConfig(**{**cfg.__dict__, **change})
    with pytest.raises(snap.SnapshotError, match="different run") as err:
        train(other, out, resume=True, progress=False)
    assert named in str(err.value)


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign"])
def test_corrupted_snapshot_is_refused(finished_run, damage):
    cfg, out = finished_run
    path = out / FILES["snapshot"]
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data = bytearray(b"PK\x03\x04 not ours")
    path.write_bytes(bytes(data))
    want = "not a metagrad snapshot" if damage == "foreign" else "corrupted"
    with pytest.raises(snap.SnapshotError, match=want):
        train(cfg, out, resume=True, progress=False)


def test_shape_mismatch_inside_a_valid_snapshot_is_refused(finished_run):
    cfg, out = finished_run
    path = out / FILES["snapshot"]
    payload = snap.load_snapshot(path)
    payload["shapes"]["4.bias"] = [2]
    snap.save_snapshot(path, payload)
    with pytest.raises(snap.SnapshotError, match=r"shapes\.4\.bias: snapshot \[2\]"):
        train(cfg, out, resume=True, progress=False)


def test_snapshot_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    snap.save_snapshot(path, {"step": 1, "x": torch.arange(3)})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        snap.save_snapshot(path, {"step": 2, "x": torch.arange(5)})
    monkeypatch.undo()
    back = snap.load_snapshot(path)
    assert back["step"] == 1 and torch.equal(back["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temp files left


# --------------------------------------------------------------------------------------------
# the command line and the report section


def test_cli_trains_all_methods_and_writes_figures(tmp_path, capsys):
    out = tmp_path / "all"
    rc = cli.main(["train", "--method", "all", "--meta-steps", "2", "--meta-batch", "3",
                   "--heldout-tasks", "4", "--out", str(out), "--quiet"])
    assert rc == 0
    comparison = pd.read_csv(out / "comparison.csv")
    assert list(comparison.method) == [*METHOD_NAMES, "baseline (joint training)"]
    for name in METHOD_NAMES:
        summary = json.loads((out / name / FILES["summary"]).read_text())
        row = comparison[comparison.method == name].iloc[0]
        assert row.post_update_mse_10 == summary["heldout"]["post_update_mse"]["10"]
        assert len(read_log(out / name / FILES["log"])) == 2
    for fig in train_cli.FIGURES.values():
        assert (out / fig).stat().st_size > 10_000
    assert "baseline (joint training)" in capsys.readouterr().out

    # Running again into the same folder needs --resume or --overwrite ...
    rc = cli.main(["train", "--method", "maml", "--meta-steps", "2", "--out", str(out / "maml"),
                   "--quiet"])
    assert rc == 2 and "--resume" in capsys.readouterr().err
    # ... and --resume of a finished run only re-evaluates it: same numbers.
    before = json.loads((out / "maml" / FILES["summary"]).read_text())
    rc = cli.main(["train", "--method", "maml", "--meta-steps", "2", "--meta-batch", "3",
                   "--heldout-tasks", "4", "--out", str(out / "maml"), "--quiet", "--resume"])
    assert rc == 0
    after = json.loads((out / "maml" / FILES["summary"]).read_text())
    assert after["heldout"] == before["heldout"] and after["baseline"]["mse_by_steps"] == \
        before["baseline"]["mse_by_steps"]


@pytest.mark.parametrize("flags, message", [
    (["--steps", "-1"], "steps must be a non-negative integer"),
    (["--inner-lr", "0"], "inner_lr must be a finite positive number"),
    (["--meta-lr", "-0.1"], "meta_lr must be a finite positive number"),
    (["--meta-lr", "nan"], "meta_lr must be a finite positive number"),
    (["--meta-steps", "0"], "meta_steps must be a positive integer"),
    (["--meta-batch", "0"], "meta_batch must be a positive integer"),
    (["--snapshot-every", "-5"], "snapshot_every must be a non-negative integer"),
    (["--method", "imaml", "--lam", "-1"], "lam must be a finite positive number"),
    (["--method", "neumann", "--terms", "-2"], "terms must be a non-negative integer"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--resume"], "no snapshot"),
])
def test_cli_rejects_bad_flags_with_one_line(tmp_path, capsys, flags, message):
    rc = cli.main(["train", "--out", str(tmp_path / "x"), "--quiet", *flags])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1


def test_cli_unknown_method_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--method", "sgd"])
    assert exit_info.value.code == 2 and "invalid choice: 'sgd'" in capsys.readouterr().err


def test_cli_refuses_corrupted_snapshot(finished_run, capsys):
    cfg, out = finished_run
    (out / FILES["snapshot"]).write_bytes(b"metagrad-snapshot 1\n" + b"0" * 64 + b"\nxx")
    rc = cli.main(["train", "--method", "imaml", "--meta-steps", "2", "--meta-batch", "4",
                   "--seed", "3", "--out", str(out), "--resume", "--quiet"])
    assert rc == 2 and "corrupted" in capsys.readouterr().err


def test_report_section(tmp_path, monkeypatch):
    monkeypatch.setattr(train_section, "QUICK_META_STEPS", 2)
    monkeypatch.setattr(train_section, "QUICK_HELDOUT_TASKS", 3)
    monkeypatch.setattr(train_section, "METHOD_NAMES", ["maml", "reptile"])  # all six: CLI test
    text = train_section.training_section(ReportContext(out=tmp_path, device="cpu", seed=0,
                                                    quick=True))
    frame = pd.read_csv(tmp_path / "training_comparison.csv")
    assert list(frame.method) == ["maml", "reptile", "baseline (joint training)"]
    assert frame.pre_update_mse.map(math.isfinite).all()
    for fig in train_cli.FIGURES.values():
        assert f"](training_{fig})" in text and (tmp_path / f"training_{fig}").exists()
    assert "| maml" in text


def test_training_uses_float32_module_loss(tmp_path):
    # The loop must hand the methods float32 parameters and the module loss it documents.
    cfg = small("maml", meta_steps=1)
    res = train(cfg, tmp_path, progress=False)
    assert all(v.dtype == torch.float32 for v in res.params.values())
    model = mlp((1, *cfg.hidden, 1), seed=cfg.seed)
    loss = mg.module_loss(model, F.mse_loss)
    tasks = next(task_stream(cfg))
    direct = sum(float(loss(mg.params_of(model), tasks.task(i)[0]).detach())
                 for i in range(4)) / 4
    assert res.log["pre_update_loss"][0] == pytest.approx(direct, rel=RTOL32)


def test_numerical_warnings_are_counted_not_flooded(tmp_path, capsys):
    # λ = 1 with η = 1: the Neumann series Σ (−H/λ)ʲ b diverges iff ρ(H) ≥ λ. Check that
    # condition independently with a dense float64 Hessian of the first task's train loss.
    cfg = small("neumann", meta_steps=3, lam=1.0)
    params = init_params(cfg)
    train_b, _ = next(task_stream(cfg)).task(0)
    sizes = [p.numel() for p in params]

    def flat_loss(v):
        return mse([c.view(p.shape) for c, p in zip(v.split(sizes), params, strict=True)],
                   train_b)

    eigs = torch.linalg.eigvalsh(torch.autograd.functional.hessian(flat_loss, torch.cat(
        [p.reshape(-1) for p in params])))
    assert eigs.abs().max() > 1.0

    res = train(cfg, tmp_path, progress=True)
    log = read_log(tmp_path / FILES["log"])
    assert (log["warnings"] > 0).all()
    assert res.summary["warning_steps"] == 3
    assert any("Neumann series diverges" in w for w in res.summary["first_warnings"])
    err = capsys.readouterr().err
    assert err.count("Neumann series diverges") == 1  # shown once, not once per step


@pytest.mark.parametrize("method", ["maml", "fomaml"])
def test_one_inner_step_that_raises_the_train_loss_is_reported(method, tmp_path):
    # K = 1: the only inner iterate is φ itself, so the check must read L_tr(φ). The
    # independent numbers: L_tr(θ) and L_tr(φ) of the first step's tasks, by plain
    # float64 autograd, with φ = θ − α∇L_tr(θ).
    cfg = small(method, meta_steps=2, steps=1, inner_lr=5.0)
    params = init_params(cfg)
    tasks = next(task_stream(cfg))
    rose = []
    for i in range(cfg.meta_batch):
        train_b, _ = tasks.task(i)
        theta = [p.clone().requires_grad_() for p in params]
        grads = torch.autograd.grad(mse(theta, train_b), theta)
        phi = [t.detach() - 5.0 * g for t, g in zip(theta, grads, strict=True)]
        rose.append(float(mse(phi, train_b)) > float(mse(params, train_b)))
    assert any(rose)

    res = train(cfg, tmp_path, progress=False)
    log = read_log(tmp_path / FILES["log"])
    assert log["warnings"][0] > 0 and "inner_loop_rise" in log["findings"][0]
    assert any("inner loss rose" in w for w in res.summary["first_warnings"])


def test_divergence_stops_before_the_bad_update(tmp_path, capsys):
    # α = 1e30: one inner step sends φ to ~1e30, so L_val(φ) ~ 1e60 overflows float32 (max
    # ~3.4e38) to inf at the very first meta-step.
    bad = small("fomaml", meta_steps=3, inner_lr=1e30)
    with pytest.raises(train_cli.TrainingDiverged, match="diverged at meta-step 1") as err:
        train(bad, tmp_path / "bad", progress=False)
    assert err.value.meta_step == 1
    assert len(read_log(tmp_path / "bad" / FILES["log"])) == 1

    # Several methods: the diverged one is reported, the others still finish.
    good = small("maml", meta_steps=2)
    results, failed = train_cli.train_many([good, bad.resolved()], tmp_path / "many",
                                           progress=False)
    assert list(results) == ["maml"] and failed == {"fomaml": "diverged at meta-step 1"}
    frame = train_cli.comparison_frame(results, failed)
    assert list(frame.method) == ["maml", "fomaml", "baseline (joint training)"]
    assert frame.status[1] == "diverged at meta-step 1" and math.isnan(frame.pre_update_mse[1])
    assert "fomaml diverged" in capsys.readouterr().err
