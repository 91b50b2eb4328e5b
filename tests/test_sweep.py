"""Fast tests of the sweep runner (``metagrad_bench.sweep``).

Timings are never asserted; the error column is compared with numbers computed here
another way (dense Hessian products).
"""

from __future__ import annotations

import csv

import pytest
import torch
from metagrad_bench.sweep import COLUMNS, Block, sweep

from metagrad.cli import main
from metagrad.problems import make_problem


def _rows(path):
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


TINY = [Block("sinusoid", ["maml", "fomaml", "imaml"], [1], meta_batch=2)]


def test_csv_columns_and_unused_settings_empty(tmp_path):
    sweep(TINY, tmp_path, repeats=1, progress=False)
    header, rows = _rows(tmp_path / "sweep.csv")
    assert header == COLUMNS
    assert sorted(r["method"] for r in rows) == ["fomaml", "imaml", "maml"]
    by = {r["method"]: r for r in rows}
    # MAML reads only steps: λ, cg_iters, terms are empty; IMAML reads λ and cg_iters.
    assert (by["maml"]["lam"], by["maml"]["cg_iters"], by["maml"]["terms"]) == ("", "", "")
    assert (by["imaml"]["lam"], by["imaml"]["cg_iters"], by["imaml"]["terms"]) == ("1.0", "5", "")
    for r in rows:
        assert r["device"] == "cpu" and r["torch"] == torch.__version__
        assert float(r["median_ms"]) > 0 and float(r["predicted_ms"]) > 0
        ratio = float(r["median_ms"]) / float(r["predicted_ms"])
        assert float(r["measured_over_predicted"]) == pytest.approx(ratio, rel=1e-9)
    # IMAML on the ReLU sinusoid has no implicit target (documented): NaN, i.e. empty.
    assert by["imaml"]["approx_error"] in ("", "nan")
    # MAML against its own exact target: float64 rounding only.
    assert float(by["maml"]["approx_error"]) < 1e-12


def test_resumable_completed_rows_not_redone(tmp_path):
    sweep(TINY, tmp_path, repeats=1, progress=False)
    _, first = _rows(tmp_path / "sweep.csv")
    sweep(TINY, tmp_path, repeats=1, progress=False)
    _, second = _rows(tmp_path / "sweep.csv")
    assert second == first  # nothing appended, nothing rewritten
    more = [Block("sinusoid", ["maml", "fomaml", "imaml"], [1, 2], meta_batch=2)]
    sweep(more, tmp_path, repeats=1, progress=False)
    _, third = _rows(tmp_path / "sweep.csv")
    assert third[: len(first)] == first
    assert sorted((r["method"], r["steps"]) for r in third[len(first):]) == [
        ("fomaml", "2"), ("imaml", "2"), ("maml", "2")]


def test_error_column_equals_dense_hessian_computation(tmp_path):
    """FOMAML's approx_error at K = 1 against ‖g − g*‖/‖g*‖ with the exact MAML gradient
    written as a dense product, g*ᵢ = (I − αH(θ)) ∇L_val(θ − α∇L_tr(θ)) (Finn et al. 2017)."""
    alpha = 0.01
    sweep([Block("sinusoid", ["fomaml"], [1], meta_batch=2, inner_lr=alpha)], tmp_path,
          repeats=1, progress=False)
    _, rows = _rows(tmp_path / "sweep.csv")
    p = make_problem("sinusoid", meta_batch=2, dtype=torch.float64)
    names = list(p.params)
    shapes = [p.params[k].shape for k in names]
    theta = torch.cat([p.params[k].detach().reshape(-1) for k in names])

    def f(w, batch):
        chunks = torch.split(w, [s.numel() for s in shapes])
        ps = {k: c.reshape(s) for k, c, s in zip(names, chunks, shapes)}
        return p.loss(ps, batch)

    exact_sum = torch.zeros_like(theta)
    fomaml_sum = torch.zeros_like(theta)
    for i in range(2):
        train, val = p.tasks.task(i)
        h = torch.autograd.functional.hessian(lambda w, b=train: f(w, b), theta)
        g_tr = torch.autograd.functional.jacobian(lambda w, b=train: f(w, b), theta)
        phi = theta - alpha * g_tr
        g_val = torch.autograd.functional.jacobian(lambda w, b=val: f(w, b), phi)
        exact_sum += g_val - alpha * h @ g_val
        fomaml_sum += g_val
    expected = float((fomaml_sum - exact_sum).norm() / exact_sum.norm())
    assert float(rows[0]["approx_error"]) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("argv", [
    ["sweep", "--steps", "101"],
    ["sweep", "--cg-iters", "51"],
    ["sweep", "--lam", "0"],
    ["sweep", "--methods", "nope"],
    ["sweep", "--preset", "cpu-quick", "--steps", "1"],
    ["sweep", "--repeats", "0"],
    ["sweep", "--device", "tpu"],
])
def test_cli_rejects_bad_input(argv, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metagrad sweep: error:" in err and len(err.strip().splitlines()) == 1


def test_a_torn_last_row_is_dropped_and_measured_again(tmp_path, capsys):
    """A crash (or a full disk) mid-append leaves a row without its newline; resuming must
    neither fail in the CSV parser nor keep the torn row."""
    sweep(TINY, tmp_path, repeats=1, progress=False)
    path = tmp_path / "sweep.csv"
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # torn tail
    sweep(TINY, tmp_path, repeats=1, progress=False)
    assert "dropped an incomplete last row" in capsys.readouterr().err
    header, rows = _rows(path)
    assert header == COLUMNS and sorted(r["method"] for r in rows) == ["fomaml", "imaml", "maml"]
    assert path.read_bytes().endswith(b"\n")


def test_a_damaged_middle_row_is_an_error_that_names_the_file(tmp_path):
    sweep(TINY, tmp_path, repeats=1, progress=False)
    path = tmp_path / "sweep.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + "maml,sinusoid\n" + "".join(lines[2:]))
    assert main(["sweep", "--methods", "maml", "--steps", "1", "--meta-batch", "2",
                 "--repeats", "1", "--out", str(tmp_path), "--no-figures"]) == 2


def test_a_row_write_that_fails_is_rolled_back(tmp_path, monkeypatch):
    from metagrad_bench import sweep as sweep_module

    path = tmp_path / "sweep.csv"
    sweep_module.append_row(path, {"method": "maml"})
    before = path.read_bytes()
    monkeypatch.setattr(sweep_module.os, "write", lambda fd, data: len(data) // 2)
    with pytest.raises(OSError, match="rolled back"):
        sweep_module.append_row(path, {"method": "fomaml"})
    assert path.read_bytes() == before


@pytest.mark.parametrize("argv", [
    ["sweep", "--problem", "convnet"],              # no axis: it would run the default preset
    ["sweep", "--preset", "cpu-quick", "--inner-lr", "-1"],
    ["sweep", "--inner-lr", "0.05"],
    ["sweep", "--methods", "maml", "--lam", "5"],   # MAML reads no λ
    ["sweep", "--methods", "fomaml", "--cg-iters", "3"],
    ["sweep", "--steps", "1", "--inner-lr", "-1"],
])
def test_flags_that_would_do_nothing_are_refused(argv, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metagrad sweep: error:" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "sweep.csv").exists()


def test_asv_history_reads_every_parameter_combination(tmp_path):
    """asv stores one result list per benchmark in the order of the product of its
    parameter lists; the history must pair each time with its own combination."""
    import json

    from metagrad_bench.asv_history import read

    machine = tmp_path / "m"
    machine.mkdir()
    (machine / "machine.json").write_text("{}")
    columns = ["result", "params", "version"]
    for commit, date, scale in (("a" * 40, 1_000_000, 1.0), ("b" * 40, 2_000_000, 2.0)):
        (machine / f"{commit[:8]}-env.json").write_text(json.dumps({
            "commit_hash": commit, "date": date, "result_columns": columns,
            "results": {"benchmarks.T.time_x": [
                [0.001 * scale, 0.002 * scale, None, 0.004 * scale],
                [["'maml'", "'imaml'"], ["1", "5"]], "v"]}}))
    frame = read(machine).sort_values(["commit", "params"])
    assert set(frame.kind) == {"time"} and set(frame.axis) == {"ms per call"}
    first = frame[frame.commit == "aaaaaaaa"].set_index("params")["value"].to_dict()
    assert first == pytest.approx({"maml 1": 1.0, "maml 5": 2.0, "imaml 5": 4.0})
    second = frame[frame.commit == "bbbbbbbb"].set_index("params")["value"].to_dict()
    assert second == pytest.approx({"maml 1": 2.0, "maml 5": 4.0, "imaml 5": 8.0})


def _heavy_ball_maml(p, alpha: float, beta: float, steps: int) -> torch.Tensor:
    """MAML's mean meta-gradient through a heavy-ball inner loop, by plain autograd in
    float64 (bₖ₊₁ = β bₖ + ∇L_tr(φₖ), φₖ₊₁ = φₖ − α bₖ₊₁, b₀ = 0; Polyak 1964), one task
    at a time, written here without metagrad."""
    names = list(p.params)
    total = None
    for i in range(p.tasks.num_tasks):
        train, val = p.tasks.task(i)
        theta = {k: p.params[k].detach().clone().requires_grad_(True) for k in names}
        phi, b = dict(theta), {k: torch.zeros_like(v) for k, v in theta.items()}
        for _ in range(steps):
            g = torch.autograd.grad(p.loss(phi, train), [phi[k] for k in names],
                                    create_graph=True)
            b = {k: beta * b[k] + gk for k, gk in zip(names, g)}
            phi = {k: phi[k] - alpha * b[k] for k in names}
        grad = torch.autograd.grad(p.loss(phi, val), [theta[k] for k in names])
        flat = torch.cat([x.reshape(-1) for x in grad])
        total = flat if total is None else total + flat
    return total / p.tasks.num_tasks


def test_inner_loop_forms_are_swept_against_their_own_exact_target(tmp_path):
    """A momentum row's approx_error is measured against MAML through the momentum loop
    (here by hand): its meta-gradient is that one to rounding, and the plain loop's row,
    whose target differs from it by far more, keeps its own."""
    alpha, steps = 0.005, 2
    sweep([Block("sinusoid_tanh", ["maml"], [steps], meta_batch=2, inner_lr=alpha,
                 inner=["plain", "momentum"])], tmp_path, repeats=1, progress=False)
    header, rows = _rows(tmp_path / "sweep.csv")
    assert header == COLUMNS
    by = {r["inner"]: r for r in rows}
    assert sorted(by) == ["", "momentum"]
    p = make_problem("sinusoid_tanh", meta_batch=2, dtype=torch.float64)
    momentum = _heavy_ball_maml(p, alpha, 0.9, steps)
    plain = _heavy_ball_maml(p, alpha, 0.0, steps)
    assert float((momentum - plain).norm() / momentum.norm()) > 1e-3  # the targets differ
    assert float(by["momentum"]["approx_error"]) < 1e-12
    assert float(by[""]["approx_error"]) < 1e-12
    from metagrad_bench import variants

    method, _ = variants.make("maml", steps=steps, inner_lr=alpha, inner="momentum",
                              params=p.params)
    g = method(p.loss, p.params, p.tasks).grad
    flat = torch.cat([g[k].reshape(-1) for k in p.params])
    assert float((flat - momentum).norm() / momentum.norm()) < 1e-12


def test_a_sweep_without_the_inner_column_resumes_as_plain_rows(tmp_path):
    """A CSV written before the inner column existed: its rows are the plain loop's."""
    from metagrad_bench.sweep import row_key

    old = {"method": "maml", "problem": "sinusoid", "meta_batch": "2", "steps": "1",
           "inner_lr": "0.01", "lam": "", "cg_iters": "", "terms": "", "device": "cpu",
           "seed": "0"}
    run = Block("sinusoid", ["maml"], [1], meta_batch=2).runs()[0]
    assert row_key(old) == row_key({**run, "device": "cpu", "seed": 0})
    assert row_key({**old, "inner": "momentum"}) != row_key(old)


@pytest.mark.parametrize("argv", [
    ["sweep", "--methods", "maml", "--inner", "bogus"],
    ["sweep", "--methods", "imaml", "--inner", "anil"],          # implicit: every parameter
    ["sweep", "--methods", "maml", "--inner", "per_step", "--steps", "0"],
])
def test_bad_inner_loop_forms_are_refused(argv, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metagrad sweep: error:" in err and len(err.strip().splitlines()) == 1
    assert "--inner" in err
