"""The study behind ``metagrad train --seeds/--tune/--regime/--matched-cost`` and the
``finn2017`` preset: interval arithmetic against hand computations and scipy, the
separation of validation and test tasks, the regimes' settings against dense spectra,
the gradient probe against a float64 reference loop, and the preset against
docs/finn2017.md. Networks are tiny (8-8) and runs a few meta-steps.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps
from test_training import init_params, ref_step

import metagrad as mg
from metagrad import cli
from metagrad.train import TrainConfig, outdir, study, train
from metagrad.train import command as train_cli
from metagrad.train import config as train_config
from metagrad.train.evaluation import evaluation_dict
from metagrad.train.stats import (
    combined_interval,
    holm,
    paired_difference,
    seed_interval,
    t_quantile,
    task_interval,
)
from metagrad.train.study import aggregate
from metagrad.train.study.finn2017 import PRESET, reference_test_tasks

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(hidden=(8, 8), meta_batch=3, heldout_tasks=6, heldout_query=5,
            validation_tasks=6, snapshot_every=0, meta_steps=3, probe_tasks=2)


# --------------------------------------------------------------------------------------------
# interval arithmetic


def test_t_quantile_matches_the_table_and_scipy():
    assert round(t_quantile(0.975, 4), 3) == 2.776  # printed t tables, 4 degrees of freedom
    assert round(t_quantile(0.975, 1), 3) == 12.706
    for df in range(1, 41):
        for p in (0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(sps.t.ppf(p, df), rel=1e-9)


def test_seed_interval_by_hand():
    # 5 seeds: mean 3, sample variance ((4 + 1 + 1 + 0 + 4) / 4) = 2.5,
    # half-width t₀.₉₇₅,₄ · √2.5 / √5 = 2.77645 · 0.707107 = 1.96324.
    iv = seed_interval([1.0, 2.0, 4.0, 3.0, 5.0])
    assert iv.mean == 3.0 and iv.n == 5
    assert iv.half_width == pytest.approx(1.96324, abs=1e-5)
    assert math.isnan(seed_interval([2.0]).half_width)  # one seed: no interval


def test_paired_difference_by_hand():
    # Differences 0.1, 0.3, 0.2: mean 0.2, s = 0.1, t(0.975, 2) = 4.303:
    # half-width 4.30265 · 0.1 / √3 = 0.248414; the interval contains 0 (not resolved), while
    # the unpaired spreads (a: 1.1…1.5) would say even less.
    iv = paired_difference([1.1, 1.5, 1.3], [1.0, 1.2, 1.1])
    assert iv.mean == pytest.approx(0.2)
    assert iv.half_width == pytest.approx(0.248414, abs=1e-6)
    assert not iv.excludes_zero
    iv = paired_difference([1.1, 1.5, 1.3], [0.6, 1.0, 0.8])  # every difference 0.5
    assert iv.mean == pytest.approx(0.5) and iv.half_width == pytest.approx(0, abs=1e-12)
    assert iv.excludes_zero


def test_combined_interval_by_hand():
    # Seeds 1, 2, 3 (s² = 1), task std 2 over 100 tasks: a = 1/3, b = 0.04, se = √0.37333
    # = 0.611010; Welch–Satterthwaite ν = 0.37333² / ((1/3)²/2 + 0.04²/99) = 2.508 → 2;
    # half-width t₀.₉₇₅,₂ · se = 4.302653 · 0.611010 = 2.628964.
    iv = combined_interval([1.0, 2.0, 3.0], 2.0, 100)
    assert iv.mean == 2.0 and iv.df == 2
    assert iv.half_width == pytest.approx(2.628964, abs=1e-6)
    # the p-value of the t statistic 2/0.611010 with 2 degrees of freedom
    assert iv.p_value == pytest.approx(2 * sps.t.sf(2.0 / math.sqrt(1 / 3 + 0.04), 2),
                                       rel=1e-9)
    # one seed: the task part alone, with T − 1 degrees of freedom
    one = combined_interval([2.0], 2.0, 100)
    assert one.half_width == pytest.approx(sps.t.ppf(0.975, 99) * 0.2, rel=1e-9)
    assert "bounded" in combined_interval([1.0, 2.0], 1.0, 10, bound=True).method


def test_combined_interval_covers_the_expected_mse_of_a_crossed_design():
    # Y[s, t] = μ + seed effect + task effect + noise, the tasks shared by the seeds, as in a
    # study. The interval must cover μ about 95 % of the time; leaving out either source
    # must not (the seed-only interval under-covers here, the test-set part being large).
    rng = np.random.default_rng(0)
    S, T, reps, mu = 5, 200, 2000, 1.0
    hits, seed_only = 0, 0
    for _ in range(reps):
        y = (mu + rng.normal(0, 0.05, (S, 1)) + rng.normal(0, 1.0, (1, T))
             + rng.normal(0, 0.3, (S, T)))
        per_seed = y.mean(1)
        iv = combined_interval(per_seed.tolist(), float(y.mean(0).std(ddof=1)), T)
        hits += iv.low <= mu <= iv.high
        seed_only += seed_interval(per_seed.tolist()).low <= mu <= \
            seed_interval(per_seed.tolist()).high
    assert 0.935 <= hits / reps <= 0.965  # 3 standard errors of a 95 % coverage
    assert seed_only / reps < 0.8  # 0.58 here: the seed part alone under-covers


def test_holm_by_hand():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 → 4·0.005, 3·0.01, 2·0.03, max(0.06, 1·0.04).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.5, math.nan, 0.01])  # NaN is not a comparison: m = 2
    assert adjusted[0] == 0.5 and math.isnan(adjusted[1]) and adjusted[2] == 0.02


def test_task_interval_is_finn_et_al_s():
    x = np.random.default_rng(0).gamma(2.0, 1.0, size=600)
    iv = task_interval(x.tolist())
    # main.py:200-201 of the reference code: 1.96 * np.std(x, 0) / np.sqrt(600)
    assert iv.half_width == pytest.approx(1.96 * np.std(x) / np.sqrt(600), rel=1e-12)
    per_task = torch.tensor(np.stack([x, 2 * x], 1))
    d = evaluation_dict(per_task, per_task[:, 0], tasks=600, query=5, seed=1, source="t",
                        shots=5, eval_lr=0.01, eval_steps=(1,))
    assert d["post_update_ci95"]["1"] == pytest.approx(2 * 1.96 * np.std(x) / np.sqrt(600))


def test_diverged_tasks_are_counted_and_set_apart():
    # Four tasks, MSE before and after 1 and 2 steps; task 2 ends above its start (×100),
    # task 3 goes non-finite at step 2. Medians and means of the rest by hand.
    per_task = torch.tensor([[1.0, 0.5, 0.4],
                             [2.0, 1.0, 0.6],
                             [1.0, 100.0, 1e6],
                             [4.0, 2.0, math.inf]], dtype=torch.float64)
    d = evaluation_dict(per_task, per_task[:, 0], tasks=4, query=5, seed=0, source="t",
                        shots=5, eval_lr=0.01, eval_steps=(1, 2))
    assert d["diverged_tasks_by_steps"] == [0, 1, 2]
    assert d["median_by_steps"][1] == 1.0  # torch's median: the lower of the middle two
    assert d["mean_without_diverged_by_steps"][1] == pytest.approx((0.5 + 1.0 + 2.0) / 3)
    assert d["mean_without_diverged_by_steps"][2] == pytest.approx((0.4 + 0.6) / 2)


# --------------------------------------------------------------------------------------------
# a tiny study end to end: tables against the per-run files


def tiny_study(tmp_path, **kw) -> tuple[study.Study, Path, dict]:
    spec = study.Study(base=TrainConfig(**TINY), methods=("maml", "fomaml"),
                       seeds=(0, 1, 2), **kw)
    out = tmp_path / "study"
    record = study.run(spec, out, progress=False)
    aggregate.write_tables(out, record)
    return spec, out, record


def _per_task(out: Path, folder: str, k: int) -> np.ndarray:
    """Seeds × tasks test MSE after k steps, read from the per-task tables (the baseline's
    at the step size chosen for k)."""
    rows = []
    for s in (0, 1, 2):
        path = out / folder.format(s=s)
        f = pd.read_csv(path / "heldout_per_task.csv")
        summary = outdir.read_json(path / "summary.json")
        if "evaluation" in summary:
            f = f[f.eval_lr == summary["evaluation"]["eval_lr_by_steps"][str(k)]]
        rows.append(f.sort_values("task")[f"mse_{k}"].to_numpy())
    return np.array(rows)


def _by_hand(y: np.ndarray) -> tuple[float, float, float]:
    """Mean, half-width and p-value of the seeds-and-tasks interval of a seeds × tasks
    table, with scipy's t: variance s²/S + σ²/T, Welch–Satterthwaite ν rounded down."""
    S, T = y.shape
    a = y.mean(1).var(ddof=1) / S
    b = y.mean(0).var(ddof=1) / T
    df = math.floor((a + b) ** 2 / (a * a / (S - 1) + b * b / (T - 1)))
    se = math.sqrt(a + b)
    return y.mean(), sps.t.ppf(0.975, df) * se, 2 * sps.t.sf(abs(y.mean()) / se, df)


def test_study_tables_are_the_per_seed_numbers_with_intervals_for_seeds_and_tasks(tmp_path):
    _, out, record = tiny_study(tmp_path)
    comp = pd.read_csv(out / "comparison.csv").set_index("variant")
    folders = {"maml": "runs/maml/seed{s}", "fomaml": "runs/fomaml/seed{s}",
               "baseline": "baselines/seed{s}"}
    for name, folder in folders.items():
        y = _per_task(out, folder, 1)
        mean, half, _ = _by_hand(y)
        assert comp.loc[name, "mse_1"] == pytest.approx(mean, rel=1e-9)
        assert comp.loc[name, "mse_1_ci"] == pytest.approx(half, rel=1e-9)
        seeds = y.mean(1)
        assert comp.loc[name, "mse_1_seed_ci"] == pytest.approx(
            sps.t.ppf(0.975, 2) * seeds.std(ddof=1) / np.sqrt(3), rel=1e-9)
        assert comp.loc[name, "task_part"] == "per-task"
    diffs = pd.read_csv(out / "differences.csv")
    at1 = diffs[diffs.k == 1]
    for _, row in at1.iterrows():
        d = _per_task(out, folders[row.a], 1) - _per_task(out, folders[row.b], 1)
        mean, half, p = _by_hand(d)
        assert row.mean_diff == pytest.approx(mean, rel=1e-9)
        assert row.ci_low == pytest.approx(mean - half, rel=1e-9)
        assert row.p_value == pytest.approx(p, rel=1e-6)
    # Holm over the three pairs of k = 1, by hand
    p = at1.p_value.to_numpy()
    order = np.argsort(p)
    adjusted = np.maximum.accumulate(np.minimum(1, (3 - np.arange(3)) * p[order]))
    np.testing.assert_allclose(at1.p_holm.to_numpy()[order], adjusted, rtol=1e-12)
    assert (at1.resolved == (at1.p_holm < 0.05)).all()
    # the median over test tasks (mean over seeds) and the blown-up tasks, from the per-task
    # tables: numpy's median of an even count averages the middle two, torch's takes the
    # lower one, so compare with the lower middle value
    medians, blown = [], 0
    for s in (0, 1, 2):
        f = pd.read_csv(out / "runs" / "maml" / f"seed{s}" / "heldout_per_task.csv")
        medians.append(np.sort(f.mse_1.to_numpy())[(len(f) - 1) // 2])
        blown += int((f.mse_10 > 10 * f.mse_0).sum())
    assert comp.loc["maml", "median_1"] == pytest.approx(np.mean(medians), rel=1e-12)
    assert comp.loc["maml", "diverged_10"] == blown
    text = (out / "study.md").read_text()
    assert "t₀.₉₇₅,2 = 4.303" in text and "Which differences the intervals resolve" in text
    assert "Holm" in text and "Matched cost" not in text  # no matched regime in this study
    for fig in ("comparison.png", "heldout_mse.png", "learning_curves.png"):
        assert (out / fig).stat().st_size > 10_000


def test_without_per_task_tables_the_task_part_is_the_bound(tmp_path):
    # Re-aggregating runs whose per-task tables were not kept: the task part is bounded by
    # the runs' mean std over tasks (read back from Finn et al.'s interval), which is at
    # least the exact one; the table says so.
    _, out, record = tiny_study(tmp_path)
    exact = pd.read_csv(out / "comparison.csv").set_index("variant")
    for path in out.rglob("heldout_per_task.csv"):
        path.unlink()
    (out / aggregate.TASK_MEANS).unlink()
    aggregate.write_tables(out, record)
    comp = pd.read_csv(out / "comparison.csv").set_index("variant")
    n = TINY["heldout_tasks"]
    for name in ("maml", "fomaml"):
        sds = [outdir.read_json(out / "runs" / name / f"seed{s}" / "summary.json")["heldout"]
               ["ci95_by_steps"][1] * math.sqrt(n) / 1.96 * math.sqrt(n / (n - 1))
               for s in (0, 1, 2)]
        seeds = [outdir.read_json(out / "runs" / name / f"seed{s}" / "summary.json")
                 ["heldout"]["mse_by_steps"][1] for s in (0, 1, 2)]
        want = combined_interval(seeds, float(np.mean(sds)), n, bound=True)
        assert comp.loc[name, "mse_1_ci"] == pytest.approx(want.half_width, rel=1e-9)
        assert comp.loc[name, "task_part"] == "bound"
        assert comp.loc[name, "mse_1_ci"] >= exact.loc[name, "mse_1_ci"] * (1 - 1e-9)
    assert "bounded" in (out / "study.md").read_text()
    # paired differences: the seed part alone, said so (the bound would be far too wide)
    diffs = pd.read_csv(out / "differences.csv")
    row = diffs[(diffs.a == "maml") & (diffs.b == "fomaml") & (diffs.k == 1)].iloc[0]
    d = [outdir.read_json(out / "runs" / "maml" / f"seed{s}" / "summary.json")["heldout"]
         ["mse_by_steps"][1] - outdir.read_json(out / "runs" / "fomaml" / f"seed{s}" /
                                                "summary.json")["heldout"]["mse_by_steps"][1]
         for s in (0, 1, 2)]
    want = paired_difference([float(x) for x in d], [0.0] * 3)
    assert row.ci_low == pytest.approx(want.low, rel=1e-9) and row.task_part == "not included"


def test_study_resumes_without_retraining_finished_runs(tmp_path, monkeypatch):
    spec, out, _ = tiny_study(tmp_path)
    before = (out / "runs" / "maml" / "seed1" / "summary.json").read_bytes()
    calls = []
    monkeypatch.setattr(study.design, "train", lambda *a, **k: calls.append(a))
    study.run(spec, out, resume=True, progress=False)
    assert calls == []  # every run was found finished with the same settings
    assert (out / "runs" / "maml" / "seed1" / "summary.json").read_bytes() == before


# --------------------------------------------------------------------------------------------
# validation tasks for choosing, test tasks only for the final report


def test_tuning_never_draws_the_test_tasks(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the test tasks were drawn while tuning")

    monkeypatch.setattr(train_config, "heldout_tasks", forbidden)
    spec = study.Study(base=TrainConfig(**TINY), methods=("penalty",), seeds=(0,),
                       tune=True)
    chosen = study.tune(spec, tmp_path / "a", resume=False, progress=False)
    grid = study.tuning_grid("penalty", "k1")["lam"]
    assert set(chosen) == {"penalty"} and chosen["penalty"]["lam"] in grid
    scores = pd.read_csv(tmp_path / "a" / "tuning.csv")
    assert len(scores) == len(grid) and scores.chosen.sum() == 1
    assert scores.loc[scores.validation_mse_1.idxmin(), "chosen"]
    # Another test set changes nothing that tuning saw.
    other = replace(spec, base=replace(spec.base, heldout_seed=999))
    study.tune(other, tmp_path / "b", resume=False, progress=False)
    pd.testing.assert_frame_equal(scores, pd.read_csv(tmp_path / "b" / "tuning.csv"))
    monkeypatch.undo()
    # ... and the validation tasks are not the test tasks.
    cfg = TrainConfig(**TINY).resolved()
    assert not torch.equal(train_config.validation_tasks(cfg).info["amplitude"],
                           train_config.heldout_tasks(cfg).info["amplitude"][:6])


def test_validation_seed_equal_to_the_test_seed_is_refused():
    with pytest.raises(ValueError, match="validation tasks would be the test tasks"):
        TrainConfig(validation_seed=2017).resolved()


# --------------------------------------------------------------------------------------------
# regimes


def test_solved_settings_by_hand():
    # λ = 300, spectrum [−100, 500]: α = 2/(600 − 100 + 500) = 0.002, ρ = 600/1000 = 0.6,
    # K = ⌈ln 1e-3 / ln 0.6⌉ = ⌈13.52⌉ = 14; CG: √κ = √(800/200) = 2, r = 1/3,
    # m = ⌈ln 5e-4 / ln(1/3)⌉ = ⌈6.92⌉ = 7; Neumann: a ∈ [2/3, 8/3], η = 2/(10/3) = 0.6,
    # ρ = (2)/(10/3) = 0.6, J = 14.
    s = study.solved_settings("imaml", 300.0)
    assert s == {"lam": 300.0, "inner_lr": pytest.approx(0.002), "steps": 14, "cg_iters": 7}
    s = study.solved_settings("neumann", 300.0)
    assert s["step"] == pytest.approx(0.6) and s["terms"] == 14 and s["steps"] == 14
    with pytest.raises(ValueError, match="lam > 100"):
        study.solved_settings("imaml", 50.0)


def test_solved_settings_solve_a_quadratic_with_known_spectrum():
    # Linear regression: L_tr is quadratic, its Hessian H = (2/n)XᵀX is constant. With the
    # spectrum measured densely, proximal GD with the derived settings must reach the
    # closed-form minimiser φ* = (H + λI)⁻¹(λθ + (2/n)Xᵀy) to the contraction asked for, and
    # CG the solution of (I + H/λ)x = ∇L_val(φ) likewise.
    p = mg.problems.make_problem("linreg12", meta_batch=1, dtype=torch.float64)
    (x, y), (xv, yv) = p.task_list()[0]
    n = x.shape[0]
    H = 2 / n * x.T @ x
    eig = torch.linalg.eigvalsh(H)
    lam, curvature = 0.5, (float(eig.min()) - 0.01, float(eig.max()) + 0.01)
    for name in ("imaml", "neumann"):
        s = study.solved_settings(name, lam, curvature=curvature, tol=1e-6)
        theta = p.params["w"]
        phi_star = torch.linalg.solve(H + lam * torch.eye(12, dtype=torch.float64),
                                      lam * theta + 2 / n * x.T @ y)
        phi = theta.clone()
        for _ in range(s["steps"]):
            phi = phi - s["inner_lr"] * (H @ phi - 2 / n * x.T @ y + lam * (phi - theta))
        assert float((phi - phi_star).norm() / (theta - phi_star).norm()) <= 1e-6
        exact = torch.linalg.solve(torch.eye(12, dtype=torch.float64) + H / lam,
                                   2 / xv.shape[0] * xv.T @ (xv @ phi - yv))
        method = mg.METHODS[name](**s)
        g = method(p.loss, p.params, p.tasks).grad["w"]
        assert float((g - exact).norm() / exact.norm()) <= 2e-6


def test_matched_settings_cost_four_gradient_equivalents():
    # Costs per task (docs/methods.md): MAML 3K+1, FOMAML K+1, Reptile K, IMAML K+1+2m,
    # Neumann K+1+2J, Penalty K+4. Four gradient-equivalents, MAML's at K = 1:
    want = {"maml": {"steps": 1}, "fomaml": {"steps": 3}, "reptile": {"steps": 4},
            "imaml": {"steps": 1, "cg_iters": 1}, "neumann": {"steps": 1, "terms": 1},
            "penalty": {"steps": 0}}
    for name, settings in want.items():
        got = study.matched_settings(name, {"steps": 1, "inner_lr": 0.01, "lam": 300.0})
        assert {k: got[k] for k in settings} == settings, name
        assert mg.METHODS[name](**got).gradient_equivalents() == 4.0


def test_variants_of_a_full_study():
    names = [v.name for v in study.variants(mg.METHOD_NAMES, ("k1", "solved", "matched"), True)]
    assert names == ["maml", "fomaml", "reptile", "imaml", "neumann", "penalty", "imaml-solved",
                     "neumann-solved", "maml-matched", "fomaml-matched", "reptile-matched",
                     "imaml-matched", "neumann-matched", "penalty-matched"]
    v = study.variants(["imaml"], ("solved",), False)[0]
    assert v.settings({})["lam"] == 300.0 and v.settings({})["steps"] == 14
    # compiled where it pays: the implicit methods always, the others from 20 000 steps on
    maml = study.variants(["maml"], ("k1",), False)[0]
    short = TrainConfig(compile=True)
    assert study.config_for(short, v, v.settings({}), 0).compile
    assert not study.config_for(short, maml, {}, 0).compile
    assert study.config_for(replace(short, meta_steps=70_000), maml, {}, 0).compile
    assert not study.config_for(TrainConfig(), v, v.settings({}), 0).compile


# --------------------------------------------------------------------------------------------
# the gradient probe against a float64 reference loop


def test_probe_errors_against_the_reference_loop(tmp_path):
    # The probe compares the run's float32 method with the oracle's exact MAML gradient.
    # Independent reference: the hand-written float64 MLP and per-task autograd loop of
    # test_training (MAML and FOMAML at K = 1). For MAML the error is float32 rounding; for
    # FOMAML it is the first-order approximation error, computed here in float64.
    for method in ("maml", "fomaml"):
        cfg = TrainConfig(method=method, **{**TINY, "meta_steps": 1}, probe_at=(0,),
                          seed=3)
        res = train(cfg, tmp_path / method, progress=False)
        row = res.probes.iloc[0]
        tasks = mg.Sinusoid(shots=cfg.shots, query=cfg.query).sample(
            cfg.probe_tasks, seed=cfg.probe_seed, dtype=torch.float64)
        params = init_params(cfg.resolved())
        errs, coss = [], []
        for i in range(cfg.probe_tasks):
            one = mg.Task((tasks.train[0][i:i + 1], tasks.train[1][i:i + 1]),
                          (tasks.val[0][i:i + 1], tasks.val[1][i:i + 1]))
            g = torch.cat([t.reshape(-1) for t in ref_step(method, params, one, 0.01)[2]])
            ref = torch.cat([t.reshape(-1) for t in ref_step("maml", params, one, 0.01)[2]])
            errs.append(float((g - ref).norm() / ref.norm()))
            coss.append(float(g @ ref / (g.norm() * ref.norm())))
        if method == "maml":
            assert row.err_maml < 1e-5 and row.cos_maml == pytest.approx(1, abs=1e-9)
        else:
            assert row.err_maml == pytest.approx(np.mean(errs), rel=1e-4)
            assert row.cos_maml == pytest.approx(np.mean(coss), rel=1e-6)
            assert row.err_maml > 1e-3  # the approximation error is visible above rounding
        assert math.isnan(row.err_implicit)
        assert pd.read_csv(tmp_path / method / "probe.csv").meta_step.tolist() == [0]


def test_probe_confirms_the_solved_regime(tmp_path):
    # λ = 300 on the tiny net: the derived settings solve the proximal problem, so the
    # method's gradient is the exact implicit gradient (oracle: L-BFGS + Newton, dense
    # solve) to about the solver tolerance, and the proximal residual is small; one
    # proximal step at inner_lr = 0.01 is far from it.
    s = study.solved_settings("imaml", 300.0)
    solved = train(TrainConfig(method="imaml", **{**TINY, "meta_steps": 2}, probe_at=(0, 2),
                               **s), tmp_path / "solved", progress=False)
    k1 = train(TrainConfig(method="imaml", lam=300.0, **{**TINY, "meta_steps": 2},
                           probe_at=(0,)), tmp_path / "k1", progress=False)
    p = solved.probes.set_index("meta_step")
    assert (p.implicit_defined == 2).all()
    assert (p.err_implicit < 5e-3).all() and (p.prox_residual < 1e-2).all()
    assert (p.findings == "").all() or p.findings.isna().all()
    assert solved.summary["finding_steps"] == {}
    q = k1.probes.iloc[0]
    assert q.prox_residual > 1.0 and q.err_implicit > 10 * p.err_implicit.max()


# --------------------------------------------------------------------------------------------
# Finn et al. 2017's protocol


def _doc_preset() -> dict:
    """The settings block of docs/finn2017.md §4, parsed (comments dropped)."""
    text = (ROOT / "docs" / "finn2017.md").read_text()
    block = re.search(r"FINN2017 = dict\((.*?)\n\)", text, re.S).group(1)
    call = ast.parse("dict(" + block + "\n)", mode="eval").body
    names = {"__builtins__": {}, "tuple": tuple, "range": range}  # eval_steps=tuple(range(…))
    return {kw.arg: eval(compile(ast.Expression(kw.value), "finn2017.md", "eval"), names)
            for kw in call.keywords}


def test_preset_follows_docs_finn2017():
    doc = _doc_preset()
    same = ("method", "meta_steps", "meta_batch", "shots", "query", "steps", "inner_lr",
            "meta_lr", "hidden", "eval_steps", "heldout_tasks", "heldout_seed", "init",
            "eval_shots", "heldout_source", "baseline_data", "baseline_eval_lrs")
    for key in same:
        assert PRESET[key] == doc[key], key
    args = cli.build_parser("train").parse_args(["train", "--preset", "finn2017"])
    (cfg,) = train_cli._configs(train_cli.resolve(args))
    for key in same:
        assert getattr(cfg, key) == (tuple(doc[key]) if isinstance(doc[key], list)
                                     else doc[key]), key
    # the released command's inner_lr (the setting that reproduces Table 2), in training
    # and at test time
    assert cfg.inner_lr == 0.001 and cfg.eval_lr == 0.001
    assert cfg.baseline_adam_steps == 70_000
    # the paper's stated inner_lr
    args = cli.build_parser("train").parse_args(["train", "--preset", "finn2017",
                                                 "--inner-lr", "0.01"])
    (cfg,) = train_cli._configs(train_cli.resolve(args))
    assert cfg.inner_lr == 0.01 and cfg.eval_lr == 0.01


def test_reference_test_tasks_match_the_check_values_of_the_note():
    # docs/finn2017.md §1.7: numpy.random.seed(1), then per task A, φ, 2K inputs.
    for shots, last in ((10, 3.470276), (5, 2.691235)):
        tasks = reference_test_tasks(600, shots, seed=1, dtype=torch.float64)
        assert float(tasks.info["amplitude"][0]) == pytest.approx(2.143408, abs=1e-6)
        assert float(tasks.info["phase"][0]) == pytest.approx(2.262966, abs=1e-6)
        assert float(tasks.train[0][0, 0, 0]) == pytest.approx(-4.998856, abs=1e-6)
        assert float(tasks.info["amplitude"][599]) == pytest.approx(last, abs=1e-6)
        assert tasks.train[0].shape == (600, shots, 1) and tasks.val[0].shape == (600, shots, 1)
        y = tasks.info["amplitude"].view(-1, 1, 1) * torch.sin(
            tasks.val[0] - tasks.info["phase"].view(-1, 1, 1))
        torch.testing.assert_close(tasks.val[1], y)


def test_finn2017_initialisation():
    # Truncated normal N(0, 0.01²) cut at ±2σ: std = 0.01·√(1 − 2·2φ(2)/(Φ(2) − Φ(−2)))
    # = 0.008796; every |w| ≤ 0.02; biases zero.
    model = train_config.make_model(TrainConfig(init="finn2017", seed=5).resolved())
    w = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if "weight" in n])
    assert float(w.abs().max()) <= 0.02
    want = 0.01 * math.sqrt(1 - 4 * sps.norm.pdf(2) / (sps.norm.cdf(2) - sps.norm.cdf(-2)))
    assert float(w.std()) == pytest.approx(want, rel=0.05)  # 1681 weights: se ≈ 1.7 %
    assert all(float(p.abs().max()) == 0 for n, p in model.named_parameters() if "bias" in n)


def test_finn2017_run_reports_every_shot_count_and_the_published_numbers(tmp_path, capsys):
    out = tmp_path / "finn"
    rc = cli.main(["train", "--preset", "finn2017", "--meta-steps", "3", "--heldout-tasks",
                   "7", "--no-compile", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    summary = outdir.read_json(out / "summary.json")
    assert sorted(summary["heldout_shots"], key=int) == ["5", "10", "20"]
    per_task = pd.read_csv(out / "heldout_per_task.csv")
    five = per_task[per_task.shots == 5]
    ref = reference_test_tasks(7, 5)
    np.testing.assert_allclose(five.amplitude, ref.info["amplitude"].numpy(), rtol=1e-12)
    x = five.mse_1.to_numpy()
    assert summary["heldout_shots"]["5"]["post_update_ci95"]["1"] == pytest.approx(
        1.96 * x.std() / math.sqrt(7), rel=1e-9)
    base = summary["baseline"]
    assert set(base["eval_lr_by_steps"].values()) <= {0.001, 0.01, 0.02, 0.05}
    table = pd.read_csv(out / "finn2017.csv")
    row = table[(table.model == "maml") & (table.shots == 5) & (table.steps == 1)].iloc[0]
    assert row.published == 0.67 and row.mse == pytest.approx(x.mean(), rel=1e-9)
    assert "0.67" in (out / "finn2017.md").read_text()



# --------------------------------------------------------------------------------------------
# the compiled path


def test_compiled_training_follows_the_eager_run(tmp_path):
    # Same settings, compiled vs eager meta-gradient: the same numbers up to float32
    # rounding (fused kernels reorder sums), after a few Adam steps.
    cfg = TrainConfig(method="maml", **{**TINY, "meta_steps": 3})
    eager = train(cfg, tmp_path / "eager", progress=False)
    compiled = train(replace(cfg, compile=True), tmp_path / "compiled", progress=False)
    assert compiled.summary["compile_seconds"] > 0 and eager.summary["compile_seconds"] == 0
    for k in eager.params:
        torch.testing.assert_close(compiled.params[k], eager.params[k], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(compiled.log.post_update_loss, eager.log.post_update_loss,
                               rtol=1e-5)



def test_baseline_step_size_is_chosen_on_validation_tasks_only(tmp_path, monkeypatch):
    # The baseline's fine-tuning step size is chosen per number of steps on the validation
    # tasks: the choice cannot change with the test set, and it is the step size whose
    # validation MSE (recomputed here from the stored curves) is lowest.
    from metagrad.train import train_baseline
    cfg = TrainConfig(**{**TINY, "meta_steps": 5}, baseline_eval_lrs=(0.003, 0.03, 0.3))
    a = train_baseline(cfg).evaluation
    b = train_baseline(replace(cfg, heldout_seed=4242)).evaluation
    assert a["eval_lr_by_steps"] == b["eval_lr_by_steps"]
    assert a["validation_mse_by_lr"] == b["validation_mse_by_lr"]
    assert a["mse_by_steps"] != b["mse_by_steps"]  # the test numbers did change
    for k, lr in a["eval_lr_by_steps"].items():
        curves = {float(x): c[int(k)] for x, c in a["validation_mse_by_lr"].items()}
        assert lr == min(curves, key=curves.get)


# --------------------------------------------------------------------------------------------
# the old public paths of what moved to metagrad.train.study


@pytest.mark.parametrize("name", ["aggregate", "finn2017", "finn2017_report", "steptime"])
def test_moved_modules_still_import_with_a_deprecation_warning(name):
    import importlib
    import sys
    sys.modules.pop(f"metagrad.train.{name}", None)
    with pytest.warns(DeprecationWarning, match=f"moved to metagrad.train.study.{name}"):
        old = importlib.import_module(f"metagrad.train.{name}")
    assert old is importlib.import_module(f"metagrad.train.study.{name}")


def test_moved_names_still_answer_with_a_deprecation_warning():
    # The values the old hand-kept tables had, now read off the method classes.
    with pytest.warns(DeprecationWarning, match="train_settings"):
        assert train_config.SETTING_DEFAULTS == {"imaml": {"lam": 300.0},
                                                 "neumann": {"lam": 1000.0},
                                                 "penalty": {"lam": 0.001}}
    with pytest.warns(DeprecationWarning, match="outer_lr"):
        assert train_config.REPTILE_META_LR == 1.0
    with pytest.warns(DeprecationWarning, match="tuning_grid"):
        assert study.GRIDS == {
            "maml": {}, "fomaml": {},
            "reptile": {"meta_lr": (0.1, 0.3, 1.0, 3.0), "steps": (1, 3, 10)},
            "imaml": {"lam": (100.0, 300.0, 1000.0, 3000.0)},
            "neumann": {"lam": (300.0, 1000.0, 3000.0), "step": (0.5, 1.0)},
            "penalty": {"lam": (1e-4, 1e-3, 1e-2)},
            "imaml-solved": {"lam": (300.0, 1000.0, 3000.0)},
            "neumann-solved": {"lam": (300.0, 1000.0, 3000.0)}}


def test_the_old_steptime_command_still_runs():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "metagrad.train.steptime", "--help"],
                         capture_output=True, text=True, check=True)
    assert "python -m metagrad.train.study.steptime" in out.stdout
