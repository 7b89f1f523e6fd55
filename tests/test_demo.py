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
  "flags", [["--steps", "-3"], ["--batch-size", "x"], ["--lr", "0"], ["--optimizer", "sgd"]]
)
def test_bad_flags_give_a_short_error_not_a_traceback(flags):
  proc = subprocess.run(
    [sys.executable, "-m", "lamb_optax.demo", *flags], capture_output=True, text=True, check=False
  )
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  assert "error:" in proc.stderr


def test_demo_defaults_reach_095(capsys):
  assert demo.main([]) == 0
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert float(line.split(": ")[1]) >= 0.95
