"""Atomic writes and the progress helper."""

import io
import os

import numpy as np
import pytest

from sevlm_jax import io_utils


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / "a.json"
  io_utils.write_json_atomic(path, {"v": 1})
  with pytest.raises(TypeError):
    io_utils.write_json_atomic(path, {"v": object()})  # not JSON: fails while writing
  assert path.read_text().strip().startswith("{") and '"v": 1' in path.read_text()
  assert os.listdir(tmp_path) == ["a.json"]
  io_utils.save_npy_atomic(tmp_path / "t.npy", np.arange(3))
  np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), np.arange(3))


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
  import subprocess, sys  # pylint: disable=import-outside-toplevel,multiple-imports
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  (tmp_path / f"x_1.npy.tmp{dead}").write_bytes(b"")
  (tmp_path / f"x_2.npy.tmp{os.getpid()}").write_bytes(b"")  # this process: alive
  (tmp_path / f"other.npy.tmp{dead}").write_bytes(b"")  # another prefix: not ours
  removed = io_utils.remove_stale_temps(tmp_path, "x_")
  assert [os.path.basename(p) for p in removed] == [f"x_1.npy.tmp{dead}"]
  assert sorted(os.listdir(tmp_path)) == sorted([f"x_2.npy.tmp{os.getpid()}", f"other.npy.tmp{dead}"])


@pytest.mark.parametrize("seconds, text", [
    (5, "00:00:05"), (3725, "01:02:05"), (86400 + 3600 * 3 + 61, "1d 03:01:01"),
    (100 * 86400, "100d 00:00:00"), (float("inf"), "?"), (float("nan"), "?"),
])
def test_durations_past_a_day_show_days(seconds, text):
  assert io_utils.format_duration(seconds) == text


def test_progress_logs_throttled_lines_off_a_terminal(monkeypatch):
  lines, now = [], [0.0]
  monkeypatch.setattr(io_utils.time, "monotonic", lambda: now[0])
  monkeypatch.setattr(io_utils.logging, "info", lambda fmt, *args: lines.append(fmt % args))
  with io_utils.Progress("images", total=1000, unit="img", log_every_s=30,
                         stream=io.StringIO()) as bar:
    for _ in range(10):
      now[0] += 5.0
      bar.update(50)
  # 50 s of work: one line at 30 s, and one at the end.
  assert len(lines) == 2
  assert lines[0] == "images: 300 / 1,000 img (10.0 img/s, 00:01:10 left)"
  assert lines[1] == "images: 500 / 1,000 img (10.0 img/s, 00:00:50 left)"


def test_progress_is_a_bar_on_a_terminal():
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  out = Terminal()
  with io_utils.Progress("images", total=4, unit="img", stream=out) as bar:
    bar.update(4)
  assert "images" in out.getvalue() and "4/4" in out.getvalue()

