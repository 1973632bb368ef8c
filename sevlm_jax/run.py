"""Everything a run needs before its first step: data set, tokenizer, VAD table, model, params.

The demo data set is generated on first use; real ArtEmis data is prepared from the
raw files when the ready directory does not exist yet, and a missing file gets a message
saying exactly what to download and which flag to set.
"""

import dataclasses
import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.data import artemis_text
from sevlm_jax.data import demo
from sevlm_jax.data import dominant as dominant_lib
from sevlm_jax.data import images as images_lib
from sevlm_jax.data import pipeline
from sevlm_jax.data import prepare
from sevlm_jax.data import records
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.errors import ConfigError
from sevlm_jax.models import config as model_config_lib
from sevlm_jax.models import sevlm as sevlm_lib
from sevlm_jax.weights import gpt2 as gpt2_map
from sevlm_jax.weights import io as weights_io
from sevlm_jax.weights import load as weights
from sevlm_jax.weights import sevlm as sevlm_weights

ARTEMIS_HELP = (
    "ArtEmis is not downloadable from here: get artemis_dataset_release_v0.csv (v1.0) or the v2.0 "
    "'Combined' CSVs from https://www.artemisdataset.org, and the WikiArt images (folders "
    "{art_style}/{painting}.jpg) from the WikiArt dump the ArtEmis page links to; then pass "
    "--config.data.csv=PATH --config.data.images=DIR (or --config.data.ready_dir=DIR of an already "
    "prepared data set). To try the project without them: --config=configs/sevlm.py:demo")
LEXICON_HELP = (
    "the NRC-VAD lexicon cannot be shipped (its licence forbids redistribution): download it from "
    "https://saifmohammad.com/WebPages/nrc-vad.html and pass --config.data.lexicon=PATH to "
    "NRC-VAD-Lexicon.txt (v1, either scale) or NRC-VAD-Lexicon-v2.1.txt; Warriner-style CSV norms "
    "also work (--config.data.lexicon_format=warriner)")


@dataclasses.dataclass
class Run:
  config: ml_collections.ConfigDict
  ready_dir: str
  tokenizer: Any
  vad_table: np.ndarray  # [vocab, 3] float32
  model: sevlm_lib.SEVLM
  abstract_params: Any
  output_ids: np.ndarray | None = None  # restricted output vocabulary (token ids), or None


def default_ready_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.data.ready_dir or os.path.join(workdir, "data")


def resolve_ready_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The prepared data set for this config, preparing it first when needed."""
  data = config.data
  ready_dir = default_ready_dir(config, workdir)
  if data.source == "demo":
    # For the demo, ready_dir is the root the demo generator owns (raw files + ready data).
    return demo.ensure_demo_dataset(ready_dir, **_demo_kwargs(config))
  fmt = check_data_source(config, ready_dir)
  if fmt is not None:
    # The split seed stays ArtEmis's own, whatever the training seed.
    prepare.prepare(data.csv, data.images, ready_dir, fmt=fmt, image_size=data.image_size,
                    text_preprocessing=data.text_preprocessing,
                    resize_filter=resize_filter(config))
  return ready_dir


def check_data_source(config: ml_collections.ConfigDict, ready_dir: str) -> str | None:
  """None when `ready_dir` is a complete prepared data set, else the input format to prepare it
  from, once the raw files are known to exist (a ConfigError saying what to get otherwise)."""
  data = config.data
  if records.is_complete(ready_dir):
    return None
  if data.source == "ready":
    raise ConfigError(f"data.ready_dir={ready_dir!r} holds no complete prepared data set. " + ARTEMIS_HELP)
  if not data.csv or not data.images:
    raise ConfigError("data.csv and data.images are not set and no prepared data set is at "
                      f"{ready_dir}. " + ARTEMIS_HELP)
  fmt = {"artemis_v1": "v1", "artemis_v2": "v2", "sevlm_json": "sevlm_json",
         "artemis_preprocessed": "artemis_preprocessed"}.get(data.source)
  if fmt is None:
    raise ConfigError(f"data.source={data.source!r} is not one of artemis_v1, artemis_v2, "
                      "sevlm_json, artemis_preprocessed, ready, demo")
  for path in data.csv.split(","):
    if not os.path.exists(path):
      raise ConfigError(f"data.csv: {path} does not exist. " + ARTEMIS_HELP)
  if not os.path.isdir(data.images):
    raise ConfigError(f"data.images: {data.images} is not a directory. " + ARTEMIS_HELP)
  return fmt


def resize_filter(config: ml_collections.ConfigDict) -> str:
  return config.data.get("resize_filter", "bicubic")  # absent from older runs' configs


def _demo_kwargs(config) -> dict:
  kwargs = {"seed": config.seed, "image_size": config.data.image_size,
            "resize_filter": resize_filter(config)}
  if config.data.demo_num_images:
    kwargs["num_images"] = config.data.demo_num_images
  return kwargs


def lexicon_path(config: ml_collections.ConfigDict) -> str:
  if config.data.lexicon:
    if not os.path.exists(config.data.lexicon):
      raise ConfigError(f"data.lexicon: {config.data.lexicon} does not exist; " + LEXICON_HELP)
    return config.data.lexicon
  if config.data.source == "demo":
    return vad_lib.DEMO_LEXICON_PATH
  raise ConfigError("data.lexicon is not set; " + LEXICON_HELP)



def load_vad_table(config: ml_collections.ConfigDict, tokenizer, workdir: str,
                   lexicon: vad_lib.VadLexicon | None = None) -> np.ndarray:
  """The (vocab x 3) token VAD table; saved in the workdir so inference needs no lexicon.

  A run keeps the table it started with. vad_table.json records the lexicon it came from, so
  that pointing the same workdir at another lexicon is an error rather than silently ignored.
  lexicon: the config's lexicon, already parsed (read from data.lexicon otherwise).
  """
  path = os.path.join(workdir, "vad_table.npy")
  provenance_path = os.path.join(workdir, "vad_table.json")
  if os.path.exists(path):
    _check_same_lexicon(config, provenance_path)
    return np.load(path)
  lexicon_file = lexicon_path(config)
  lexicon = lexicon or vad_lib.load_lexicon(lexicon_file, fmt=config.data.lexicon_format)
  table = vad_lib.token_vad_table(tokenizer, lexicon, lookup=vad_lookup(config)).astype(np.float32)
  io_utils.save_npy_atomic(path, table)
  io_utils.write_json_atomic(provenance_path, {
      "lexicon": os.path.abspath(lexicon_file), "lexicon_sha256": io_utils.sha256_file(lexicon_file),
      "lexicon_format": config.data.lexicon_format, "vad_lookup": vad_lookup(config)})
  return table


def vad_lookup(config: ml_collections.ConfigDict) -> str:
  return config.data.get("vad_lookup", "word_then_lemma")  # absent from older runs' configs


def _check_same_lexicon(config: ml_collections.ConfigDict, provenance_path: str) -> None:
  """Raises if the config names a lexicon or a lookup rule other than the ones the workdir's
  table came from."""
  if not os.path.exists(provenance_path):  # a run from before the record existed
    return
  with open(provenance_path, encoding="utf-8") as f:
    recorded = json.load(f)
  made_with = recorded.get("vad_lookup", "word_then_lemma")  # tables from before the switch
  if made_with != vad_lookup(config):
    raise ConfigError(
        f"data.vad_lookup={vad_lookup(config)} differs from the rule this workdir's VAD table was "
        f"built with ({made_with}); use a new --workdir, or delete "
        f"{os.path.join(os.path.dirname(provenance_path), 'vad_table.npy')} to rebuild the table")
  try:
    lexicon = lexicon_path(config)
  except ConfigError:  # no lexicon given (e.g. evaluating elsewhere): the saved table is the truth
    return
  if io_utils.sha256_file(lexicon) != recorded["lexicon_sha256"]:
    raise ConfigError(
        f"data.lexicon={lexicon} differs from the lexicon this workdir's VAD table was built from "
        f"({recorded['lexicon']}); use a new --workdir, or delete "
        f"{os.path.join(os.path.dirname(provenance_path), 'vad_table.npy')} to rebuild the table "
        "(a run resumed with another table is no longer the same run)")


def output_vocabulary(config: ml_collections.ConfigDict, tokenizer, ready_dir: str, workdir: str
                      ) -> np.ndarray | None:
  """Token ids the LM softmax ranges over: None for the full GPT-2 vocabulary (the recipe).

  'train_tokens' keeps only the tokens of the training sequences (plus the prompt, every
  emotion word, " because" and <eos>): a closed-vocabulary model whose output layer is a few
  hundred rows instead of 50k, which is what makes the demo train in minutes on a CPU.
  Saved in the workdir so that inference uses the same vocabulary.
  """
  if config.output_vocab == "full":
    return None
  if config.output_vocab != "train_tokens":
    raise ConfigError(f"output_vocab={config.output_vocab!r}; choose 'full' or 'train_tokens'")
  path = os.path.join(workdir, "output_vocab.npy")
  if os.path.exists(path):
    return np.load(path)
  texts, labels = records.split_utterances(ready_dir, "train")
  ids = set(tokenizer.prompt_ids) | {tokenizer.because_id, vocab.EOS_ID}
  for name in vocab.EMOTIONS:
    ids.update(tokenizer.encode(" " + name))
  for text, label in zip(texts, labels):
    seq = tokenizer.build_sequence(int(label), text, config.data.max_len)
    ids.update(int(t) for t in seq["input_ids"][seq["token_mask"] > 0])
  table = np.asarray(sorted(ids), np.int32)
  io_utils.save_npy_atomic(path, table)
  return table


def build_model(config: ml_collections.ConfigDict) -> sevlm_lib.SEVLM:
  """The run's network; data.blank_images (the image-blind control) makes its vision input grey,
  so training, the feature cache, evaluation and prediction all see what the model was
  trained on."""
  model = config.model.to_dict()
  model["blank_images"] = bool(config.data.get("blank_images", False))
  return sevlm_lib.SEVLM(model_config_lib.ModelConfig.from_dict(model))


# The switches between our behaviour (first choice, the default) and the public code's. The
# modules of training and inference sit above this one, so their choices are spelled here.
_CHOICES = {
    "data.resize_filter": tuple(images_lib.RESIZE_FILTERS),
    "data.vad_lookup": vad_lib.LOOKUPS,
    "pretrained.new_token_init": gpt2_map.NEW_TOKEN_INITS,
    "optim.adam_form": ("optax", "transformers"),
    "train.pair_anchor": pipeline.PAIR_ANCHORS,
    "eval.stop_on": ("eos", "any_special"),
    "eval.explanation_after": ("first_because", "last_because"),
    "train.negatives": ("random", "public"),
}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Catches configs that would fail deep inside, before any data or compilation work."""
  if config.model.vision.image_size != config.data.image_size:
    raise ConfigError(f"model.vision.image_size={config.model.vision.image_size} differs from "
                      f"data.image_size={config.data.image_size}; set both to the same value")
  if config.data.max_len < 8:
    raise ConfigError(f"data.max_len={config.data.max_len} is too short for '<bos> the emotion is "
                      "<emotion> because ...'; use at least 8")
  if config.train.batch_size < 2 and config.loss.contrastive_weight:
    raise ConfigError("train.batch_size must be >= 2 with the contrastive loss (it needs another image)")
  if config.data.text_preprocessing not in artemis_text.PREPROCESSINGS:
    raise ConfigError(f"data.text_preprocessing={config.data.text_preprocessing!r}; choose 'artemis' "
                      "(ArtEmis's preprocessing for deep nets) or 'raw' (the utterances as written)")
  if config.eval.dominant not in dominant_lib.RULES:
    raise ConfigError(f"eval.dominant={config.eval.dominant!r}; choose one of "
                      f"{', '.join(dominant_lib.RULES)}")
  if config.eval.decoding not in ("greedy", "top_p", "beam"):
    raise ConfigError(f"eval.decoding={config.eval.decoding!r}; choose 'greedy', 'top_p' or 'beam'")
  if config.data.lexicon_format not in vad_lib.FORMATS:
    raise ConfigError(f"data.lexicon_format={config.data.lexicon_format!r}; choose one of "
                      f"{', '.join(vad_lib.FORMATS)}")
  if config.output_vocab not in ("full", "train_tokens"):
    raise ConfigError(f"output_vocab={config.output_vocab!r}; choose 'full' or 'train_tokens'")
  for field, choices in _CHOICES.items():
    group, name = field.split(".")
    value = config[group].get(name, choices[0])  # absent from older runs' configs: the default
    if value not in choices:
      raise ConfigError(f"{field}={value!r}; choose one of {', '.join(choices)}")
  eps = config.loss.get("contrastive_eps", 0.0)
  if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < 1:
    raise ConfigError(f"loss.contrastive_eps={eps!r}; use 0 (exact InfoNCE) or a small positive"
                      " number (1e-8 in the public code)")


def check_workdir(workdir: str) -> None:
  """The workdir exists (created if needed) and can be written to."""
  try:
    os.makedirs(workdir, exist_ok=True)
    io_utils.write_bytes_atomic(os.path.join(workdir, ".write_check"), b"")
    os.remove(os.path.join(workdir, ".write_check"))
  except OSError as e:
    raise ConfigError(f"--workdir={workdir} cannot be written to ({e.strerror}); choose a "
                      "writable directory") from None


def check_inputs_before_preparation(config: ml_collections.ConfigDict, workdir: str
                                    ) -> vad_lib.VadLexicon | None:
  """What can be checked before the (possibly hours-long) data preparation: the raw data is
  there, the lexicon parses (returned, unless the workdir's VAD table needs none), the
  pretrained sources exist, and an already prepared data set has the configured image size."""
  ready_dir = default_ready_dir(config, workdir)
  if config.data.source != "demo":
    check_data_source(config, ready_dir)
  lexicon = None
  if not os.path.exists(os.path.join(workdir, "vad_table.npy")):
    lexicon = vad_lib.load_lexicon(lexicon_path(config), fmt=config.data.lexicon_format)
  if not ckpt_lib.has_checkpoint(workdir, ("latest",)):  # a resumed run reads no pretrained weights
    for field in ("gpt2", "clip"):
      source = config.pretrained[field]
      if source and not (field == "gpt2" and config.pretrained.get("sevlm", "")):
        try:
          weights_io.resolve(source)
        except errors.CheckpointError as e:
          raise ConfigError(f"pretrained.{field}={source!r}: {e}") from None
    if config.pretrained.get("sevlm", ""):
      try:
        sevlm_weights.locate(config.pretrained.sevlm)
      except errors.CheckpointError as e:
        raise ConfigError(f"pretrained.sevlm={config.pretrained.sevlm!r}: {e}") from None
  if config.data.source != "demo" and records.is_complete(ready_dir):
    meta = records.load_meta(ready_dir)
    text = meta.get("text_preprocessing", "raw")  # data sets prepared before the switch: raw
    if config.data.source in ("artemis_v1", "artemis_v2") and text != config.data.text_preprocessing:
      raise ConfigError(f"the prepared data set {ready_dir} holds text preprocessed as {text!r}, the "
                        f"config data.text_preprocessing={config.data.text_preprocessing!r}; set "
                        f"--config.data.text_preprocessing={text}, or use another data.ready_dir")
    size = int(meta["image_size"])
    if size != config.data.image_size:
      raise ConfigError(f"the prepared data set {ready_dir} holds {size}x{size} images, the config "
                        f"data.image_size={config.data.image_size}; set --config.data.image_size="
                        f"{size} --config.model.vision.image_size={size}, or use another "
                        "data.ready_dir")
    made_with = meta.get("resize_filter", "bicubic")  # older sets: bicubic
    if made_with != resize_filter(config):
      raise ConfigError(f"the prepared data set {ready_dir} was resized with the {made_with} filter, "
                        f"the config says data.resize_filter={resize_filter(config)}; set "
                        f"--config.data.resize_filter={made_with}, or prepare the data again into "
                        "another data.ready_dir")
  return lexicon


def prepare_run(config: ml_collections.ConfigDict, workdir: str, write_config: bool = True) -> Run:
  """Data, tokenizer, VAD table, model and output vocabulary of a run in `workdir`.

  write_config: record the config as <workdir>/config.json (training does; evaluation leaves
  the training config in place unless there is none).
  """
  check_config(config)
  check_workdir(workdir)
  lexicon = check_inputs_before_preparation(config, workdir)
  ready_dir = resolve_ready_dir(config, workdir)
  tokenizer = tokenizer_lib.load_tokenizer()
  vad_table = load_vad_table(config, tokenizer, workdir, lexicon)
  model = build_model(config)
  abstract = jax.eval_shape(lambda r: sevlm_lib.init_params(model.config, r), jax.random.PRNGKey(0))
  output_ids = output_vocabulary(config, tokenizer, ready_dir, workdir)
  config_path = os.path.join(workdir, "config.json")  # last: a failed set-up leaves none
  if write_config or not os.path.exists(config_path):
    io_utils.write_json_atomic(config_path, config.to_dict())
  return Run(config, ready_dir, tokenizer, vad_table, model, abstract, output_ids)


def initial_params(config: ml_collections.ConfigDict, run: Run) -> Any:
  """Random init, then the pretrained towers the config names."""
  return pretrained_params(config, run.model.config)


def pretrained_params(config: ml_collections.ConfigDict, model_config) -> Any:
  """Random init, then the pretrained weights the config names (pretrained.sevlm, the authors'
  released model, replaces pretrained.gpt2)."""
  params = sevlm_lib.init_params(model_config, jax.random.PRNGKey(config.seed))
  sevlm = config.pretrained.get("sevlm", "")
  if config.pretrained.gpt2 or config.pretrained.clip or sevlm:
    params = weights.load_pretrained(params, model_config, gpt2=config.pretrained.gpt2 or None,
                                     clip=config.pretrained.clip or None, sevlm=sevlm or None, seed=config.seed,
                                     new_token_init=config.pretrained.get("new_token_init", "mean"))
    logging.info("loaded pretrained weights: gpt2=%s clip=%s sevlm=%s",
                 "" if sevlm else config.pretrained.gpt2, config.pretrained.clip, sevlm)
  return params


def evaluates_imported_weights(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """No trained checkpoint in the workdir, and the authors' released model is named: evaluation
  and prediction then run the imported weights."""
  return bool(config.pretrained.get("sevlm", "")) and not ckpt_lib.has_checkpoint(workdir)
