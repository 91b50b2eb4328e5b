"""``metagrad report`` does not flood the terminal with what its own runs print: one line per
section; a section's output (the training runs' numerical findings, Python warnings) goes
to ``OUT/logs/<section>.log`` with one calm line saying why, and is printed when the
section fails."""

from __future__ import annotations

import sys
import types
import warnings

import pytest

import metagrad as mg
from metagrad.cli import main
from metagrad.report import command


def chatty_section(ctx) -> str:
    """Prints the way a training run does (tqdm's write to stderr) and warns the way a
    method with diagnose="warn" does."""
    print("maml: warning at meta-step 480 (later ones are counted in train_log.csv)",
          file=sys.stderr)
    print("fomaml: warning at meta-step 640")
    warnings.warn("the inner loss rose from one inner step to the next",
                  mg.MetaGradientWarning, stacklevel=1)
    (ctx.out / "chatty.txt").write_text("ran")
    return "## Chatty\n\nthree findings, explained here.\n"


def quiet_section(ctx) -> str:
    return "## Quiet\n"


def failing_section(ctx) -> str:
    print("step 1 done", file=sys.stderr)
    raise RuntimeError("the section broke")


@pytest.fixture
def sections(monkeypatch):
    module = types.ModuleType("fake_report_sections")
    module.chatty_section = chatty_section
    module.quiet_section = quiet_section
    module.failing_section = failing_section
    monkeypatch.setitem(sys.modules, "fake_report_sections", module)

    def use(*names: str) -> None:
        monkeypatch.setattr(command, "SECTIONS",
                            [f"fake_report_sections:{n}_section" for n in names])
        monkeypatch.setattr(command, "NOTES", {"chatty": "it shows that regime on purpose"},
                            raising=False)

    return use


def test_a_section_s_output_goes_to_its_log_with_one_calm_line(sections, tmp_path, capsys):
    sections("chatty", "quiet")
    assert main(["report", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    terminal = (out + err).splitlines()
    assert not [line for line in terminal if "warn" in line.lower()], terminal
    assert terminal == [
        "[report] chatty ...",
        next(line for line in terminal if line.startswith("[report] chatty done in ")),
        "[report] quiet ...",
        next(line for line in terminal if line.startswith("[report] quiet done in ")),
        f"wrote {tmp_path / 'report.md'}",
    ]
    chatty_done = terminal[1]
    assert chatty_done.endswith(f"; 3 line(s) of its output are in {tmp_path}/logs/chatty.log: "
                                "it shows that regime on purpose")
    log = (tmp_path / "logs" / "chatty.log").read_text()
    assert "warning at meta-step 480" in log and "warning at meta-step 640" in log
    assert "MetaGradientWarning: the inner loss rose" in log
    assert not (tmp_path / "logs" / "quiet.log").exists()
    report = (tmp_path / "report.md").read_text()
    assert "three findings, explained here." in report and "## Quiet" in report


def test_a_failing_section_shows_what_it_printed(sections, tmp_path, capsys):
    sections("failing")
    with pytest.raises(RuntimeError, match="the section broke"):
        main(["report", "--out", str(tmp_path)])
    assert "step 1 done" in capsys.readouterr().err


def test_an_earlier_log_does_not_outlive_a_quiet_run(sections, tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "quiet.log").write_text("from an earlier report")
    sections("quiet")
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "logs" / "quiet.log").exists()


def test_every_section_has_a_name_and_the_notes_name_real_sections():
    assert set(command.NOTES) <= set(command.section_names())
