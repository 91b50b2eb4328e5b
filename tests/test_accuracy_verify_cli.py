"""``metagrad verify`` as a user runs it: table, CSV + markdown, exit status."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import perturb_grad

import metagrad as mg
from metagrad.cli import main


def test_verify_passes_and_writes_csv_and_markdown(tmp_path, capsys):
    rc = main(["verify", "--problems", "linreg", "softmax", "--methods", "maml", "imaml",
               "--out", str(tmp_path)])
    assert rc == 0
    df = pd.read_csv(tmp_path / "verify.csv")
    assert set(df.method) == {"maml", "imaml"} and set(df.problem) == {"linreg", "softmax"}
    assert df.passed.all() and (df.err_reference <= 1e-9).all()
    assert (df[df.method == "maml"].err_fd <= 1e-7).all()
    assert "PASS" in (tmp_path / "verify.md").read_text()
    assert "vs bilevel target" in capsys.readouterr().out


def test_verify_exits_nonzero_when_a_method_is_off_by_one_in_a_million(tmp_path, monkeypatch,
                                                                       capsys):
    original = mg.FOMAML.__call__

    def broken(self, loss, params, tasks):
        out = original(self, loss, params, tasks)
        out.grad = perturb_grad(out.grad, 1e-6)
        return out

    monkeypatch.setattr(mg.FOMAML, "__call__", broken)
    rc = main(["verify", "--problems", "linreg", "--methods", "fomaml", "maml", "--no-fd",
               "--out", str(tmp_path)])
    assert rc == 1
    df = pd.read_csv(tmp_path / "verify.csv")
    assert not df[df.method == "fomaml"].passed.any() and df[df.method == "maml"].passed.all()
    assert "FAILED: fomaml on linreg" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["verify", "--methods", "sgd"],
                                  ["verify", "--problems", "mnist"]])
def test_verify_rejects_bad_input_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "choose from" in err[0]


def test_report_refuses_an_unknown_section(tmp_path, capsys):
    assert main(["report", "--out", str(tmp_path), "--sections", "meta_gradient"]) == 2
    err = capsys.readouterr().err
    assert "unknown meta_gradient" in err and "meta_gradients" in err
    assert not (tmp_path / "report.md").exists()
