"""Meta-training with the inner-loop forms: learned step sizes (Meta-SGD's per-entry rates,
per-step rates), the forms a method cannot run, the method's own adaptation on the test
tasks, and the learned-rates study (``--preset rates``).

The independent numbers: the rate-gradient and the own adaptation recomputed by hand in
float64 with plain autograd (φ = θ − α ⊙ ∇L_tr(θ), Li et al. 2017), a hand-written Adam
step, an uninterrupted run for a resumed one, and the study's intervals and Holm's
correction recomputed with scipy from the per-task tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import claims
import numpy as np
import pandas as pd
import pytest
import torch
from test_training import SMALL, Adam, heldout, init_params, mse, task_stream
from test_training_study import TINY, _by_hand

import metagrad as mg
from metagrad import cli
from metagrad.train import FILES, TrainConfig, read_log, train, train_baseline
from metagrad.train import command as train_cli
from metagrad.train import snapshot as snap
from metagrad.train.config import make_model
from metagrad.train.loop import shared_loss
from metagrad.train.ranks import Ranks
from metagrad.train.study import aggregate, rates, rates_report

METASGD = dict(method="maml", inner=("per_entry",))
NAMES = ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias")


def small(**kw) -> TrainConfig:
    return TrainConfig(**{**SMALL, **METASGD, **kw})


def ref_rate_gradient(params, rates, tasks):
    """float64, per task, plain autograd: d mean_i L_val(θ − α ⊙ ∇L_tr(θ)) / dα for one inner
    step with per-entry rates α (Li et al. 2017, eq. (1)-(2))."""
    alpha = [a.detach().double().clone().requires_grad_(True) for a in rates]
    total = [torch.zeros_like(a) for a in alpha]
    for i in range(tasks.num_tasks):
        train_b, val_b = tasks.task(i)
        theta = [p.detach().double().clone().requires_grad_(True) for p in params]
        g = torch.autograd.grad(mse(theta, train_b), theta)
        phi = [t - a * gi for t, a, gi in zip(theta, alpha, g, strict=True)]
        grads = torch.autograd.grad(mse(phi, val_b), alpha)
        total = [s + gi / tasks.num_tasks for s, gi in zip(total, grads, strict=True)]
    return total


# --------------------------------------------------------------------------------------------
# Meta-SGD trains: its rates get the library's rate-gradient, move, and resume exactly


def test_the_rate_gradient_written_into_the_optimizer_is_the_library_s(tmp_path, monkeypatch):
    cfg = small(meta_steps=1)
    seen = []
    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):  # the gradients the optimizer steps with
        seen.append([[p.grad.detach().clone() for p in g["params"]] for g in self.param_groups])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    res = train(cfg, tmp_path, progress=False, baseline=train_baseline(cfg.resolved()))
    monkeypatch.undo()
    (groups,) = [s for s in seen if len(s) == 2]  # the meta-step (the baseline has one group)
    theta_grad, rate_grad = groups

    # the library's call on the same θ₀, rates and first meta-batch: the same numbers
    model = make_model(cfg.resolved())
    params = mg.params_of(model)
    rates0 = mg.inner_rates(params, cfg.inner_lr, per="entry")
    tasks = next(task_stream(cfg))
    out = mg.MAML(steps=1, inner_lr=rates0, diagnose="record")(shared_loss(cfg), params, tasks)
    for name, got in zip(NAMES, rate_grad, strict=True):
        assert torch.equal(got, out.hyper_grad["inner_lr"][name]), name
    for name, got in zip(NAMES, theta_grad, strict=True):
        assert torch.equal(got, out.grad[name]), name

    # ... and an independent float64 recomputation. Each rate-gradient entry is a sum over
    # ~10 points of products of float32 gradients: rounding far below 1e-4 of its tensor's
    # largest entry; a rate applied to the wrong entry or a dropped term moves it by O(1).
    ref = ref_rate_gradient(init_params(cfg), [r.detach() for r in rates0.values()], tasks)
    for name, got, want in zip(NAMES, rate_grad, ref, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-4,
                                   atol=1e-5 * float(want.abs().max()), msg=name)

    # one Adam step from zero moments moves each rate by lr·g/(|g| + ε) (Kingma & Ba, Alg. 1)
    adam = Adam(cfg.resolved().meta_lr)
    stepped = adam.step([r.detach().double() for r in rates0.values()], ref)
    moved = 0
    for name, want in zip(NAMES, stepped, strict=True):
        got = res.rates[name].double()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7, msg=name)
        moved += int((got != cfg.inner_lr).sum())
    assert moved > 0.9 * sum(v.numel() for v in res.rates.values())  # dead units keep theirs


def test_metasgd_rates_move_log_and_resume_bit_identically(tmp_path):
    cfg = small(meta_steps=5)
    base = train_baseline(cfg.resolved())
    whole = train(cfg, tmp_path / "whole", progress=False, baseline=base)
    assert whole.summary["variant"] == "metasgd" and whole.summary["method"] == "maml"
    assert whole.summary["inner"] == ["per_entry"]
    assert set(whole.rates) == set(NAMES)
    assert all(not torch.equal(v, torch.full_like(v, cfg.inner_lr))
               for v in whole.rates.values())

    killed = train(cfg, tmp_path / "split", progress=False, baseline=base, stop_after=3)
    assert not killed.finished
    saved = snap.load_snapshot(tmp_path / "split" / FILES["snapshot"])
    assert saved["meta_step"] == 2 and set(saved["rates"]) == set(NAMES)
    resumed = train(cfg, tmp_path / "split", progress=False, baseline=base, resume=True)
    for name in NAMES:
        assert torch.equal(whole.rates[name], resumed.rates[name]), name
        assert torch.equal(whole.params[name], resumed.params[name]), name
    columns = [c for c in whole.log.columns if not c.endswith("_time_s")]
    assert {"rate_mean", "rate_min", "rate_max"} <= set(columns)
    pd.testing.assert_frame_equal(whole.log[columns], resumed.log[columns], check_exact=True)
    assert whole.summary["heldout_own"] == resumed.summary["heldout_own"]

    # the log's and the summary's rate statistics are the final rates'
    flat = torch.cat([v.double().reshape(-1) for v in whole.rates.values()])
    last = read_log(tmp_path / "whole" / FILES["log"]).iloc[-1]
    assert (last["rate_mean"], last["rate_min"], last["rate_max"]) == (
        float(flat.mean()), float(flat.min()), float(flat.max()))
    (step,) = whole.summary["rates"]["by_step"]  # per-entry rates: the same at every step
    assert (step["min"], step["max"]) == (float(flat.min()), float(flat.max()))


def test_per_step_rates_with_the_multistep_loss_resume_and_summarise_per_step(tmp_path):
    cfg = TrainConfig(**{**SMALL, "method": "maml", "inner": ("multistep", "per_step"),
                         "steps": 2, "meta_steps": 4})
    assert cfg.resolved().inner == ("per_step", "multistep")  # one spelling per combination
    whole = train(cfg, tmp_path / "whole", progress=False)
    assert whole.summary["variant"] == "maml+per_step+multistep"
    assert all(v.shape == (2, 1, 1) or v.shape == (2, 1) for v in whole.rates.values())
    for k, row in enumerate(whole.summary["rates"]["by_step"]):
        at_k = torch.stack([v[k].double().reshape(()) for v in whole.rates.values()])
        assert (row["mean"], row["min"], row["max"]) == (
            float(at_k.mean()), float(at_k.min()), float(at_k.max()))
    train(cfg, tmp_path / "split", progress=False, stop_after=3)
    resumed = train(cfg, tmp_path / "split", progress=False, resume=True)
    for name in whole.rates:
        assert torch.equal(whole.rates[name], resumed.rates[name]), name


def test_the_ranks_check_the_rates_identical_with_theta(tmp_path, monkeypatch):
    checked = []
    monkeypatch.setattr(Ranks, "check_identical", lambda self, state, step: checked.append(
        {k: {n: v.clone() for n, v in state[k].items()} for k in ("model", "rates")}))
    res = train(small(meta_steps=2, snapshot_every=1), tmp_path, progress=False)
    assert len(checked) == 2
    for name in NAMES:
        assert torch.equal(checked[-1]["rates"][name], res.rates[name])
        assert torch.equal(checked[-1]["model"][name], res.params[name])


def test_compiled_metasgd_follows_the_eager_run(tmp_path):
    eager = train(small(meta_steps=3), tmp_path / "eager", progress=False)
    compiled = train(small(meta_steps=3, compile=True), tmp_path / "compiled", progress=False)
    # the same computation up to float32 rounding (inductor fuses and reorders): 1e-5
    # relative over three meta-steps, far below one Adam step (1e-3 of a rate of 1e-2)
    for name in NAMES:
        torch.testing.assert_close(compiled.rates[name], eager.rates[name], rtol=1e-5,
                                   atol=1e-7)
    # a second seed gets its own rates, not the first run's held by a cached program
    other = train(small(meta_steps=3, compile=True, seed=4), tmp_path / "seed4",
                  progress=False)
    ref = train(small(meta_steps=3, seed=4), tmp_path / "seed4eager", progress=False)
    for name in NAMES:
        torch.testing.assert_close(other.rates[name], ref.rates[name], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# the method's own adaptation on the test tasks


def test_own_adaptation_uses_the_learned_rates(tmp_path):
    cfg = small(meta_steps=3)
    res = train(cfg, tmp_path, progress=False)
    state = snap.load_snapshot(tmp_path / FILES["snapshot"])["model"]
    theta = [state[n].double() for n in NAMES]
    alpha = [res.rates[n].double() for n in NAMES]
    tasks = heldout(cfg)
    before = after = 0.0
    for i in range(tasks.num_tasks):
        train_b, val_b = tasks.task(i)
        leaves = [t.clone().requires_grad_(True) for t in theta]
        g = torch.autograd.grad(mse(leaves, train_b), leaves)
        phi = [t - a * gi for t, a, gi in zip(theta, alpha, g, strict=True)]
        before += float(mse(theta, val_b)) / tasks.num_tasks
        after += float(mse(phi, val_b)) / tasks.num_tasks
    own = res.summary["heldout_own"]
    assert own["steps"] == 1 and own["mse_by_steps"][0] == pytest.approx(before, rel=1e-5)
    assert own["mse_by_steps"][1] == pytest.approx(after, rel=1e-5)
    # plain GD at eval_lr is a different adaptation: the standard table is kept beside it
    assert res.summary["heldout"]["mse_by_steps"][1] != own["mse_by_steps"][1]
    table = pd.read_csv(tmp_path / FILES["own_per_task"])
    assert table["mse_1"].mean() == pytest.approx(own["mse_by_steps"][1], rel=1e-12)


# --------------------------------------------------------------------------------------------
# the command line


def test_method_spellings_and_forms_on_the_command_line(tmp_path, capsys):
    parser = cli.build_parser("train")
    plan = train_cli.resolve(parser.parse_args(["train", "--method", "metasgd"]))
    (cfg,) = train_cli._configs(plan)
    assert (cfg.method, cfg.inner, cfg.variant) == ("maml", ("per_entry",), "metasgd")
    plan = train_cli.resolve(parser.parse_args(["train", "--method", "anil"]))
    assert train_cli._configs(plan)[0].inner == ("anil",)
    out = tmp_path / "all"
    rc = cli.main(["train", "--method", "all", "--inner", "momentum", "--meta-steps", "2",
                   "--meta-batch", "3", "--heldout-tasks", "4", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    comparison = pd.read_csv(out / "comparison.csv")
    names = [f"{m}+momentum" for m in mg.METHOD_NAMES]
    assert list(comparison.method)[:-1] == names
    for name in names:
        summary = mg.train.outdir.read_json(out / name / FILES["summary"])
        assert summary["inner"] == ["momentum"] and summary["method_config"]["inner"] == \
            "momentum" and summary["variant"] == name


@pytest.mark.parametrize("flags, message", [
    (["--method", "fomaml", "--inner", "multistep"],
     "--inner multistep cannot run with fomaml: the multi-step loss is MAML's"),
    (["--method", "imaml", "--inner", "anil"],
     "--inner anil cannot run with imaml: the implicit methods adapt every parameter"),
    (["--method", "reptile", "--inner", "per_entry"],
     "--inner per_entry learns step sizes, which reptile has no meta-gradient for"),
    (["--method", "all", "--inner", "per_step"],
     "--inner per_step learns step sizes, which reptile has no meta-gradient for"),
    (["--method", "metasgd", "--inner", "per_step"],
     "--inner per_entry and per_step both set inner_lr"),
    (["--inner", "anil", "--probe-at", "0"], "--probe-at compares with exact MAML"),
    (["--shots", "5", "10"], "--shots takes one support size"),
    (["--preset", "rates", "--method", "fomaml"], "--preset rates defines its variants"),
])
def test_a_form_a_method_cannot_run_is_refused_with_one_line(tmp_path, capsys, flags,
                                                             message):
    # (a few meta-steps: should a refusal break, the run ends soon and the test fails)
    rc = cli.main(["train", "--out", str(tmp_path / "x"), "--quiet", "--meta-steps", "2",
                   "--heldout-tasks", "4", *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x" / FILES["log"]).exists()


def test_an_unknown_form_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--inner", "lookahead"])
    assert exit_info.value.code == 2 and "invalid choice: 'lookahead'" in \
        capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# the learned-rates study: its tables against the per-task tables, by hand


@pytest.fixture(scope="module")
def rates_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    out = root / "study_rates"
    spec = rates.RatesStudy(base=TrainConfig(**TINY), shots=(3, 5), seeds=(0, 1, 2),
                            tune=False, steps=2)
    record = rates.run(spec, out, progress=False)
    for shots, sub in record["studies"].items():
        aggregate.write_tables(out / rates.folder(int(shots)), sub)
    rates_report.write_report(out, record, "metagrad train --preset rates --out study_rates")
    return root, out, record


def _own(out: Path, shots: int, variant: str) -> np.ndarray:
    """Seeds × tasks test MSE after the variant's own adaptation, from its per-task tables."""
    rows = []
    for s in (0, 1, 2):
        f = pd.read_csv(out / rates.folder(shots) / "runs" / variant / f"seed{s}" /
                        FILES["own_per_task"])
        last = max((c for c in f.columns if c.startswith("mse_")), key=lambda c: int(c[4:]))
        rows.append(f.sort_values("task")[last].to_numpy())
    return np.array(rows)


def test_rates_tables_are_the_intervals_computed_by_hand(rates_study):
    _, out, record = rates_study
    table = pd.read_csv(out / "rates.csv")
    names = [v.name for v in rates.rate_variants(2)]
    assert list(table["variant"]) == names * 2 and list(table["shots"]) == [3] * 5 + [5] * 5
    for _, row in table.iterrows():
        mean, half, _ = _by_hand(_own(out, row["shots"], row["variant"]))
        assert row["own_mse"] == pytest.approx(mean, rel=1e-9)
        assert row["own_mse_ci"] == pytest.approx(half, rel=1e-9)
        assert row["own_steps"] == (2 if row["variant"].endswith("-k2") else 1)
    diffs = pd.read_csv(out / "rates_differences.csv")
    planned = [(a, b) for a, b, _ in rates.comparisons(2)]
    assert [(r.shots, r.a, r.b) for r in diffs.itertuples()] == \
        [(k, a, b) for k in (3, 5) for a, b in planned]
    for _, row in diffs.iterrows():
        d = _own(out, row["shots"], row["a"]) - _own(out, row["shots"], row["b"])
        mean, half, p = _by_hand(d)
        assert row["mean_diff"] == pytest.approx(mean, rel=1e-9)
        assert row["ci_low"] == pytest.approx(mean - half, rel=1e-9)
        assert row["ci_high"] == pytest.approx(mean + half, rel=1e-9)
        assert row["p_value"] == pytest.approx(p, rel=1e-6)
    # Holm over all eight planned comparisons together, by hand
    p = diffs["p_value"].to_numpy()
    order = np.argsort(p)
    adjusted = np.maximum.accumulate(np.minimum(1, (len(p) - np.arange(len(p))) * p[order]))
    np.testing.assert_allclose(diffs["p_holm"].to_numpy()[order], adjusted, rtol=1e-12)
    assert (diffs["resolved"] == (diffs["p_holm"] < 0.05)).all()
    # the published numbers (Li et al. 2017, Table 1: K = 5, 10, 20) beside ours where we
    # measured that K, and the verdicts by hand
    pub = pd.read_csv(out / "rates_published.csv", keep_default_na=False).set_index("variant")
    assert list(pub["shots"]) == [5, 5]
    assert pub.loc["maml", "published"] == "1.13 ± 0.18"
    assert pub.loc["metasgd", "published"] == "0.90 ± 0.16"
    for name, (value, _) in (("maml", (1.13, 0.18)), ("metasgd", (0.90, 0.16))):
        row = table[(table["shots"] == 5) & (table["variant"] == name)].iloc[0]
        lo, hi = row["own_mse"] - row["own_mse_ci"], row["own_mse"] + row["own_mse_ci"]
        want = "inside" if lo <= value <= hi else "below" if value < lo else "above"
        assert pub.loc[name, "published_in_our_interval"] == want
    d = diffs[(diffs["shots"] == 5) & (diffs["a"] == "metasgd")].iloc[0]
    same = d["mean_diff"] < 0  # published: Meta-SGD below MAML
    want = {(True, True): "matches (resolved)", (True, False): "same direction, not resolved",
            (False, True): "does not match (the opposite, resolved)",
            (False, False): "opposite direction, not resolved"}[(same, bool(d["resolved"]))]
    assert pub.loc["metasgd", "ordering"] == want


def test_rates_readme_quotes_only_numbers_of_its_tables(rates_study, monkeypatch):
    root, out, _ = rates_study
    readme = out / "README.md"
    monkeypatch.setattr(claims, "RESULTS", root)
    monkeypatch.setattr(claims, "PAGES", (readme,))
    quoted = claims.claims()
    table = pd.read_csv(out / "rates.csv")
    first = f"{table['own_mse'][0]:.3f}"
    assert any(c.number == first for c in quoted)  # the check reads the table's numbers
    missing = [c.number for c in quoted if not claims.found(c)]
    assert not missing, missing
    # a stale number (one not written in the folder's tables) is caught
    tokens = claims.tokens(out)
    stale = next(f"{float(first) + k / 1000:.3f}" for k in range(1, 500)
                 if f"{float(first) + k / 1000:.3f}" not in tokens)
    text = readme.read_text().replace(first, stale, 1)
    bad = [c.number for c in claims.claims({readme: text}) if not claims.found(c)]
    assert bad == [stale]
    assert "Li, Zhou, Chen & Li 2017" in (out / "rates.md").read_text()


def test_rates_preset_plan(tmp_path):
    parser = cli.build_parser("train")
    plan = train_cli.resolve(parser.parse_args(["train", "--preset", "rates"]))
    assert plan["kind"] == "rates" and plan["tune"] and plan["shots"] == list(rates.SHOTS)
    assert plan["seeds"] == list(rates.SEEDS) and plan["base"].check_every == 10
    plan = train_cli.resolve(parser.parse_args(["train", "--preset", "rates", "--shots", "5",
                                                "--seeds", "0", "--no-tune"]))
    assert plan["shots"] == [5] and plan["seeds"] == [0] and not plan["tune"]
    spec = rates.RatesStudy(base=plan["base"], shots=(5,), seeds=(0,), tune=True)
    grids = {v.name: v.grid for v in spec.study(5).variants()}
    assert grids["metasgd"] == {"inner_lr": rates.RATE_GRID} and grids["maml"] == {}
    assert all(math.isfinite(x) for x in rates.RATE_GRID)
