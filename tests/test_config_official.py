"""configs/sevlm.py:official: the public code's behaviour, one switch per difference."""

import json

import pytest

from helpers import TINY, compile_cache, load_config, run_main

# field -> (our default, the public code's value); the README's table lists the same switches.
SWITCHES = {
    "model.vad.causal": (True, False),
    "model.image_norm": ("clip", "imagenet"),
    "model.vad.mask_padding": (True, False),
    "model.fixed_emotion_len": (0, 6),
    "model.contrastive.mean_over_padding": (False, True),
    "loss.contrastive_eps": (0.0, 1e-8),
    "train.negatives": ("random", "public"),
    "train.drop_last": (True, False),
    "train.validate_final_step": (True, False),
    "model.vad.init": ("flax", "public"),
    "data.resize_filter": ("bicubic", "bilinear"),
    "data.prescale_max_side": (0, 600),
    "data.vad_lookup": ("word_then_lemma", "wordnet_pos"),
    "pretrained.new_token_init": ("mean", "normal"),
    "optim.adam_eps": (1e-8, 1e-6),
    "optim.adam_form": ("optax", "transformers"),
    "train.pair_anchor": ("cycle", "last"),
    "train.patience": (10, 11),
    "eval.stop_on": ("eos", "any_special"),
    "eval.explanation_after": ("first_because", "last_because"),
    "eval.max_new_tokens": (25, 24),
    "eval.ea_dominant": ("acc", "half"),
    "eval.ea_histogram": ("acc", "kept"),
}
# demo,official differs from `official` here only: the demo needs no NLTK data (configs/sevlm.py).
DEMO_OFFICIAL = {"data.vad_lookup": "lemma_only"}


def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


@pytest.mark.parametrize("field", sorted(SWITCHES))
def test_official_sets_each_switch_to_the_public_value(field):
  default, public = SWITCHES[field]
  assert _flat(load_config("artemis_v1").to_dict())[field] == default
  assert _flat(load_config("official").to_dict())[field] == public


@pytest.mark.parametrize("base", ["artemis_v1", "demo"])
def test_official_differs_from_its_base_exactly_in_the_switches(base):
  ours = _flat(load_config(base).to_dict())
  official = _flat(load_config(f"{base},official").to_dict())
  assert ours.keys() == official.keys()
  assert {k for k in ours if ours[k] != official[k]} == set(SWITCHES)


def test_demo_official_has_the_public_values_but_a_lookup_needing_no_download():
  demo_official = _flat(load_config("demo,official").to_dict())
  assert {k: demo_official[k] for k in SWITCHES} == {
      **{k: public for k, (_, public) in SWITCHES.items()}, **DEMO_OFFICIAL}


def test_demo_is_applied_first_whatever_its_place():
  assert load_config("official,demo").to_dict() == load_config("demo,official").to_dict()
  assert load_config("no_vad_embedding,demo").model.use_vad_embedding is False


def test_demo_official_trains_and_evaluates(tmp_path_factory):
  """The whole command with every switch at its public value, on the tiny demo config."""
  workdir = tmp_path_factory.mktemp("official") / "run"
  tiny = {k: v for k, v in TINY.items() if k not in SWITCHES}  # the switches keep their values
  overrides = {**tiny, "train.num_steps": 4, "train.eval_every": 4, "train.checkpoint_every": 4}
  args = ["--config=configs/sevlm.py:demo,official", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  result = run_main(args, compile_cache(tmp_path_factory), workdir.parent / "log", timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  config = _flat(json.loads((workdir / "config.json").read_text()))
  assert {k: config[k] for k in SWITCHES} == {**{k: public for k, (_, public) in SWITCHES.items()},
                                              **DEMO_OFFICIAL}
  assert json.loads((workdir / "data" / "ready" / "meta.json").read_text())["resize_filter"] == "bilinear"
  assert json.loads((workdir / "vad_table.json").read_text())["vad_lookup"] == "lemma_only"
  metrics = json.loads((workdir / "metrics_test.json").read_text())
  assert 0.0 <= metrics["ACC"] <= 1.0
  assert metrics["EA_dominant_rule"] == "half over the kept annotations"


@pytest.mark.parametrize("field", [f for f in sorted(SWITCHES) if isinstance(SWITCHES[f][0], str)
                                   and not f.startswith("model.")])  # the model checks its own
def test_a_switch_set_to_an_unknown_value_is_a_config_error(field):
  from sevlm_jax import errors  # pylint: disable=import-outside-toplevel
  from sevlm_jax import main as main_lib  # pylint: disable=import-outside-toplevel
  config = load_config("demo")
  group, name = field.split(".")
  config[group][name] = "no_such_value"
  with pytest.raises(errors.ConfigError, match=f"{field}='no_such_value'; choose one of"):
    main_lib.check_config(config)


@pytest.mark.parametrize("decoding", ["greedy", "top_p", "beam"])
def test_every_decoding_method_passes_the_config_check(decoding):
  from sevlm_jax import main as main_lib  # pylint: disable=import-outside-toplevel
  config = load_config("demo")
  config.eval.decoding = decoding
  main_lib.check_config(config)
