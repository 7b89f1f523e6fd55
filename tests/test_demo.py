"""The README's main job, `python -m lamb_optax.demo`, in a few steps."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lamb_optax import demo


def test_demo_runs_and_reports_accuracy(tmp_path, capsys):
  png = tmp_path / "loss.png"
  assert demo.main(["--steps", "60", "--plot", str(png)]) == 0
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert line.startswith("test accuracy: ")
  assert float(line.split(": ")[1]) > 0.5  # 60 steps of 10 classes: far above chance
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_adamw_option(capsys):
  assert demo.main(["--steps", "5", "--optimizer", "adamw"]) == 0
  assert "test accuracy:" in capsys.readouterr().out


@pytest.mark.parametrize(
  "flags",
  [
    ["--steps", "-3"],
    ["--batch-size", "x"],
    ["--lr", "0"],
    ["--optimizer", "sgd"],
    ["--seed", "-5"],
    ["--batch-size", "99999"],
    ["--plot", "/nonexistent-dir/loss.png"],
  ],
)
def test_bad_flags_give_a_short_error_not_a_traceback(flags):
  proc = subprocess.run(
    [sys.executable, "-m", "lamb_optax.demo", *flags], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  assert "error:" in proc.stderr
  assert not proc.stdout  # refused before training


def _error(argv, capsys):
  with pytest.raises(SystemExit) as e:
    demo.main(argv)
  assert e.value.code == 2
  return capsys.readouterr().err


def test_negative_seed_is_refused(capsys):
  err = _error(["--seed", "-5"], capsys)
  assert "argument --seed" in err and "'-5'" in err and "from 0" in err


def test_batch_larger_than_the_training_set_names_the_value_and_the_limit(capsys):
  err = _error(["--batch-size", "99999"], capsys)
  assert "argument --batch-size: 99999" in err and "at most 1437" in err
  assert len(demo.load_digits(0)[0]) == demo.N_TRAIN == 1437


def test_whole_training_set_as_one_batch_is_accepted(capsys):
  assert demo.main(["--steps", "2", "--batch-size", "1437"]) == 0
  assert capsys.readouterr().out.startswith("test accuracy: ")


@pytest.mark.parametrize("where", ["missing_dir", "a_directory"])
def test_unwritable_plot_path_fails_before_training(where, tmp_path, capsys, monkeypatch):
  path = tmp_path / "no" / "loss.png" if where == "missing_dir" else tmp_path
  monkeypatch.setattr(demo, "train", lambda *a, **k: pytest.fail("trained before checking --plot"))
  err = _error(["--plot", str(path)], capsys)
  assert "argument --plot: cannot write" in err and str(path) in err


def test_plot_check_leaves_no_file_behind(tmp_path):
  path = tmp_path / "loss.png"
  assert demo._check_writable(str(path)) is None
  assert not path.exists()


def test_accuracy_is_printed_even_if_the_plot_then_fails(tmp_path, capsys, monkeypatch):
  def broken_plot(*args):
    raise OSError("disk full")

  monkeypatch.setattr(demo, "_plot", broken_plot)
  assert demo.main(["--steps", "3", "--plot", str(tmp_path / "loss.png")]) == 1
  out, err = capsys.readouterr()
  assert out.startswith("test accuracy: ")
  assert "disk full" in err


def test_help_is_plain_text_with_a_default_for_every_flag(capsys):
  with pytest.raises(SystemExit) as e:
    demo.main(["--help"])
  assert e.value.code == 0
  text = capsys.readouterr().out
  assert "``" not in text and ":func:" not in text
  options = text.split("options:")[1]
  for flag in ("--steps", "--batch-size", "--lr", "--optimizer", "--seed", "--plot"):
    entry = options.split(flag, 1)[1].split("\n  --", 1)[0]
    assert "default" in entry, flag
  assert "(default: 400)" in options and "0.01 for lamb" in options


def test_demo_defaults_reach_095(capsys):
  assert demo.main([]) == 0
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert float(line.split(": ")[1]) >= 0.95
