"""README is a contract: its Python examples run, and CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_python_examples_run():
    import metagrad as mg

    code = blocks("python")
    assert code, "README has no python examples"
    namespace: dict = {}
    exec(compile(code[0], "README.md", "exec"), namespace)  # noqa: S102  (the quickstart)
    # The quickstart's Adam step must have applied its meta-gradient: Adam's first step
    # with bias correction is lr · g / (|g| + ε) per coordinate (Kingma & Ba 2015, Alg. 1).
    from metagrad.models import mlp

    out, model = namespace["out"], namespace["model"]
    assert isinstance(out, mg.MetaGradient) and torch.isfinite(out.post_update_loss)
    initial = dict(mlp((1, 40, 40, 1)).named_parameters())
    for name, p in model.named_parameters():
        g = out.grad[name]
        expected = initial[name] - 1e-3 * g / (g.abs() + 1e-8)
        assert torch.allclose(p, expected, rtol=0, atol=1e-6), name
    for snippet in code[1:]:
        exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102
    # The diagnostics example promises a divergence report for λ = 1 on this MLP.
    assert any("Neumann series diverges" in w for w in namespace["out"].warnings)
    # The gradcheck example: every case against the oracle passes on the small model.
    report = namespace["report"]
    assert report.passed and len(report.cases) >= 1


def test_exactly_two_setup_commands_and_ci_runs_the_test_command():
    setup = README.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = [b.strip() for b in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]
    assert len(commands) == 2
    assert commands[0].endswith("metagrad report")
    test_cmd = commands[1].split("&&")[-1].strip()
    assert test_cmd.startswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd.split()[:4] == "python -m pytest -q".split()
    assert "python -m pytest -q" in ci
    install = commands[1].split("&&")[-2].strip()
    assert install.replace("pip install", "python -m pip install -q") in ci
