"""Progress of the long stages: a bar per stage on a terminal, the concise log lines elsewhere."""

from types import SimpleNamespace

import pytest

from apgrid.grid import progress
from apgrid.grid.progress import StageProgress


def trial(model_id):
    return SimpleNamespace(config={"model": {"model_id": model_id}}, last_result={"peak_rss_mb": 300.0})


def run_two_trials(log):
    callback = StageProgress("dense", log, total=2)
    for name in ("dense-a", "dense-b"):
        callback.on_trial_start(0, [], trial(name))
        callback.on_trial_result(0, [], trial(name), {"epoch": 1, "train_loss": 0.5})
        callback.on_trial_complete(0, [], trial(name))
    return callback


def test_on_a_terminal_each_stage_is_one_bar_not_a_line_per_event(monkeypatch, capsys):
    lines = []
    monkeypatch.setattr(progress, "interactive", lambda log: True)
    run_two_trials(lines.append)
    assert lines == []  # the bar took every per-trial line
    err = capsys.readouterr().err
    assert "[dense]" in err and "2/2" in err and "models" in err, err


def test_a_retry_stays_in_view_above_the_bar(monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda log: True)
    callback = StageProgress("prune", print, total=1)
    callback.on_trial_recover(0, [], trial("hydra-x"))
    callback.on_trial_error(0, [], trial("hydra-x"))
    err = capsys.readouterr().err
    assert "[prune] hydra-x: failed; retrying from its last checkpoint" in err
    assert "[prune] hydra-x: failed for good" in err and "1/1" in err


def test_off_a_terminal_the_log_lines_stay(capsys):
    lines = []
    run_two_trials(lines.append)
    assert len(lines) == 6 and "(2/2 done, 0 failed" in lines[-1]
    assert capsys.readouterr().err == ""  # no bar where nobody watches


@pytest.mark.parametrize("tty", [False, True])
def test_bars_only_for_the_default_printer_on_a_terminal(monkeypatch, tty):
    monkeypatch.setattr("sys.stdout.isatty", lambda: tty, raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: tty, raising=False)
    assert progress.interactive(print) is tty
    assert progress.interactive(lambda line: None) is False
