"""A run's set-up before its first step: the config checked, then data set, tokenizer, VAD table,
model and output vocabulary, composed from the packages that own each.

Each package checks its own config section (data.sources, weights.pretrained, models.build);
the sections of the floors above this one (decoding, the train step, the optimiser) are checked
by their own modules, and main.check_config runs every check.
"""

import os

import ml_collections

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import io_utils
from sevlm_jax.config import migrate
from sevlm_jax.config.prepared import Run
from sevlm_jax.data import formats
from sevlm_jax.data import output_vocab
from sevlm_jax.data import sources
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.data import vad_table
from sevlm_jax.errors import ConfigError
from sevlm_jax.models import build
from sevlm_jax.models import sevlm as sevlm_lib
from sevlm_jax.weights import pretrained


def check_config(config: ml_collections.ConfigDict) -> None:
  """Catches configs that would fail deep inside, before any data or compilation work: the
  sections owned by the data, model and weights packages."""
  version = migrate.version_of(config)
  if version != migrate.CONFIG_VERSION:
    raise ConfigError(f"config_version={version}, this sevlm_jax reads {migrate.CONFIG_VERSION}: "
                      "pass an older config through sevlm_jax.config.migrate.migrate(config) "
                      "first (the main command and config.json readers do)")
  build.check_config(config)
  sources.check_config(config)
  pretrained.check_config(config)


def check_workdir(workdir: str) -> None:
  """The workdir (any epath path: a local folder, gs://bucket/dir) exists (created if needed)
  and can be written to."""
  try:
    io_utils.as_path(workdir).mkdir(parents=True, exist_ok=True)
    io_utils.write_bytes_atomic(os.path.join(workdir, ".write_check"), b"")
    io_utils.as_path(workdir, ".write_check").unlink()
  except OSError as e:
    raise ConfigError(f"--workdir={workdir} cannot be written to ({e.strerror or e}); choose a "
                      "writable directory") from None


def check_inputs_before_preparation(config: ml_collections.ConfigDict, workdir: str
                                    ) -> vad_lib.VadLexicon | None:
  """What can be checked before the (possibly hours-long) data preparation: the raw data is
  there, the lexicon parses (returned, unless the workdir's VAD table needs none), the
  pretrained sources exist, and an already prepared data set was made as the config says."""
  ready_dir = sources.default_ready_dir(config, workdir)
  if config.data.source != formats.DEMO:
    sources.check_data_source(config, ready_dir)
  lexicon = vad_table.lexicon_if_needed(config, workdir)
  if not ckpt_lib.has_checkpoint(workdir, ("latest",)):  # a resumed run reads no pretrained weights
    pretrained.check_sources(config)
  sources.check_prepared(config, ready_dir)
  return lexicon


def prepare_run(config: ml_collections.ConfigDict, workdir: str, write_config: bool = True) -> Run:
  """Data, tokenizer, VAD table, model and output vocabulary of a run in `workdir`.

  write_config: record the config as <workdir>/config.json (training does; evaluation leaves
  the training config in place unless there is none).
  """
  check_config(config)
  check_workdir(workdir)
  lexicon = check_inputs_before_preparation(config, workdir)
  ready_dir = sources.resolve_ready_dir(config, workdir)
  tokenizer = tokenizer_lib.load_tokenizer()
  table = vad_table.load_vad_table(config, tokenizer, workdir, lexicon, ready_dir)
  model = build.build_model(config)
  output_ids = output_vocab.output_vocabulary(config, tokenizer, ready_dir, workdir)
  config_path = os.path.join(workdir, "config.json")  # last: a failed set-up leaves none
  if write_config or not io_utils.as_path(config_path).exists():
    io_utils.write_json_atomic(config_path, config.to_dict())
  return Run(config, ready_dir, tokenizer, table, model, sevlm_lib.abstract_params(model.config), output_ids)
