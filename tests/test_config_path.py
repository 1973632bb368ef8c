"""--config=configs/<file>: the current directory's file when there is one, else the packaged copy
(the installed wheel's case is tests/test_packaging.py's), else one line listing the packaged ones."""

import pytest

from sevlm_jax import errors
from sevlm_jax.config import config_path
from sevlm_jax.config import presets


def test_a_file_in_the_current_directory_is_used_as_given(tmp_path, monkeypatch):
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "sevlm.py").write_text("# the user's own")
  monkeypatch.chdir(tmp_path)
  assert config_path.resolve("configs/sevlm.py:demo") == "configs/sevlm.py:demo"


def test_a_missing_configs_file_is_the_packaged_copy_with_its_variants(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  packaged = presets.configs_dir() / "sevlm.py"
  argv = ["main", "--config=configs/sevlm.py:demo,official", "--workdir=w"]
  assert config_path.resolve_in_argv(argv) == [
      "main", f"--config={packaged}:demo,official", "--workdir=w"]
  assert config_path.resolve_in_argv(["main", "--config", "configs/sevlm.py"]) == [
      "main", "--config", str(packaged)]


@pytest.mark.parametrize("value", ["configs/sevlm2.py:demo", "elsewhere/sevlm.py"])
def test_nothing_matching_is_one_line_listing_the_packaged_configs(value, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(errors.ConfigError) as e:
    config_path.resolve(value)
  message = str(e.value)
  assert message.startswith(f"--config={value}: no file {value.split(':')[0]} here") and "\n" not in message
  assert "the packaged configs: configs/emotion_classifier.py, configs/sevlm.py" in message
