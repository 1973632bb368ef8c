"""A trained run written as a self-contained model directory (its files: inference/model_dir.py).

  python -m sevlm_jax.main --mode=export --workdir=runs/demo --out=exported/demo [--checkpoint=best_acc]
  Predictor.from_pretrained("exported/demo")   # no workdir, data set or lexicon needed

The authors' released model is exported the same way, from its files and the user's lexicon
(released_config=; inference/released.py): --config.pretrained.sevlm=... --config.data.lexicon=...

The directory is written whole or not at all. For a VAD table made from NRC-VAD (whose licence
forbids redistribution) the card and the log warn before the directory is shared;
include_vad_table=False leaves the table out (see inference/model_dir.py).
"""


import json
import os
import pathlib
import shutil

from absl import logging
import numpy as np
import safetensors
import safetensors.numpy

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.config import migrate
from sevlm_jax.data import formats
from sevlm_jax.data import records
from sevlm_jax.data import sources
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from sevlm_jax.inference import card_metadata
from sevlm_jax.inference import released as released_lib
from sevlm_jax.inference import space as space_lib
from sevlm_jax.inference.model_dir import (
    ADDED_TOKENS_FILE, CARD_FILE, CONFIG_FILE, FORMAT, FORMAT_VERSION, MANIFEST, NRC_VAD_WARNING, OUTPUT_VOCAB_FILE, PARAMS_FILE, TOKENIZER_DIR, VAD_FILE, flatten_params, table_sha256)
from sevlm_jax.models import build
from sevlm_jax.weights import pretrained

# ----------------------------------------------------------------------------- writing

def export_model(workdir: str, out: str, checkpoint: str = "best_acc",
                 include_vad_table: bool = True, space: bool = False,
                 released_config=None) -> pathlib.Path:
  """Writes the model directory `out` from the run in `workdir` (see the module docstring).

  space: also the files of a Hugging Face Space (inference/space.py), part of the same write.
  released_config: export the authors' released model instead, under this config (its
  pretrained.sevlm and data.lexicon; inference/released.py); workdir is then optional: only an
  evaluation of that model there (metrics_<split>.json) goes into the card.

  `out` is created, or replaced when it holds an earlier export; any other existing, non-empty
  folder is refused, so nothing of the user's is ever deleted.
  """
  workdir_path = io_utils.as_path(workdir) if workdir else None  # local, or gs://... (epath)
  out_path = pathlib.Path(out).absolute() if io_utils.is_local(out) else io_utils.as_path(out)
  for name in ("config.json", "vad_table.npy") if released_config is None else ():
    if not (workdir_path / name).is_file():
      raise CheckpointNotFoundError(
          f"{workdir_path / name} is missing: {workdir} is not a trained SEVLM run (train one with "
          "python -m sevlm_jax.main --config=configs/sevlm.py:demo --workdir=DIR)")
  if out_path.exists() and not (out_path / MANIFEST).is_file() and (
      not out_path.is_dir() or any(out_path.iterdir())):
    raise ConfigError(f"--out={out} exists and is not a SEVLM export; choose a new folder (an "
                      "earlier export there would be replaced, anything else is left alone)")
  if released_config is None:
    config = migrate.load_json(workdir_path / "config.json")
    params, meta = ckpt_lib.restore_params(str(workdir), checkpoint)
    vad_table = io_utils.load_npy(workdir_path / "vad_table.npy").astype(np.float32)
    vad_source = _vad_source(workdir_path, vad_table)
  else:
    config, params, meta, vad_table, vad_source = _released_model(released_config)
    if workdir_path is not None and not workdir_path.is_dir():
      workdir_path = None
  if not vad_source["demo_lexicon"] and include_vad_table:
    logging.warning("%s", NRC_VAD_WARNING.format(what="exported with the model",
                                                 lexicon=vad_source["lexicon"] or "(not recorded)"))
  tokenizer = tokenizer_lib.load_tokenizer()

  tmp = io_utils.temp_dir_beside(out_path)
  try:
    tensors = flatten_params(params)
    # One metadata key: safetensors writes its metadata map in a per-process random order, and a
    # single key keeps the file's bytes (and its sha256) the same for the same parameters.
    safetensors.numpy.save_file(tensors, str(tmp / PARAMS_FILE),
                                metadata={"format": f"{FORMAT} {FORMAT_VERSION}"})
    io_utils.write_json_atomic(tmp / CONFIG_FILE, config.to_dict())
    # safetensors writes its file private (0600); give it the permissions of the others (umask's).
    os.chmod(tmp / PARAMS_FILE, os.stat(tmp / CONFIG_FILE).st_mode & 0o777)
    if include_vad_table:
      io_utils.save_npy_atomic(tmp / VAD_FILE, vad_table)
    output_vocab = workdir_path / "output_vocab.npy" if released_config is None else None
    if output_vocab and output_vocab.is_file():
      (tmp / OUTPUT_VOCAB_FILE).write_bytes(output_vocab.read_bytes())  # the workdir may be gs://
    (tmp / TOKENIZER_DIR).mkdir()
    for name in tokenizer_lib.BPE_FILES:
      shutil.copyfile(tokenizer.bpe_dir / name, tmp / TOKENIZER_DIR / name)
    io_utils.write_json_atomic(tmp / TOKENIZER_DIR / ADDED_TOKENS_FILE,
                               {name: vocab.GPT2_VOCAB_SIZE + i for i, name in enumerate(vocab.ADDED_TOKENS)})
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "checkpoint": {"kind": meta.get("checkpoint"), "step": meta.get("step"),
                       "validation": {k: meta[k] for k in ("acc", "bleu4") if k in meta}},
        "num_parameters": int(sum(t.size for t in tensors.values())),
        "vad_table": dict(vad_source, included=include_vad_table, sha256=table_sha256(vad_table)),
    }
    card = model_card(config, workdir_path, manifest)
    if space:
      space_lib.write_space_files(tmp)
      card = space_lib.with_space_keys(card)
    (tmp / CARD_FILE).write_text(card, encoding="utf-8")
    manifest["files"] = {str(p.relative_to(tmp)): io_utils.sha256_file(p)
                         for p in sorted(tmp.rglob("*")) if p.is_file()
                         and not (space and str(p.relative_to(tmp)) in space_lib.UNLISTED_FILES)}
    io_utils.write_json_atomic(tmp / MANIFEST, manifest)
    io_utils.replace_dir(tmp, out_path, marker=MANIFEST)  # on an object store, written last
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("exported %s (checkpoint %s step %s) to %s", config.pretrained.sevlm
               if released_config is not None else workdir, meta.get("checkpoint"),
               meta.get("step"), out_path)
  return out_path


def _released_model(config) -> tuple:
  """(config, params, meta, vad table, its source) of the authors' released model, as a run's
  export reads them from its workdir."""
  ready = released_lib.prepare(None, config=config)
  build.check_config(ready.config)
  params = pretrained.initial_params(ready.config, build.build_model(ready.config).config)
  meta = {"checkpoint": released_lib.CHECKPOINT_KIND, "step": 0}
  return ready.config, params, meta, ready.vad_table, ready.vad_source


def _vad_source(workdir: pathlib.Path, table: np.ndarray) -> dict:
  """Where the run's VAD table came from, from vad_table.json, and whether that is the project's
  own demo lexicon (which may be shared freely)."""
  recorded = {}
  provenance = workdir / "vad_table.json"
  if provenance.is_file():
    recorded = json.loads(provenance.read_text("utf-8"))
  demo_sha = io_utils.sha256_file(vad_lib.DEMO_LEXICON_PATH)
  source = {"lexicon": os.path.basename(recorded.get("lexicon", "")) or None,
            "lexicon_sha256": recorded.get("lexicon_sha256"),
            "lexicon_format": recorded.get("lexicon_format", "auto"),
            "demo_lexicon": recorded.get("lexicon_sha256") == demo_sha}
  if table.shape != (vocab.VOCAB_SIZE, 3):
    raise CheckpointError(f"{workdir / 'vad_table.npy'} has shape {table.shape}, not "
                          f"({vocab.VOCAB_SIZE}, 3); delete it and run the training command again")
  return source


# ----------------------------------------------------------------------------- the model card

def _fmt(value) -> str:
  return f"{value:.3f}" if isinstance(value, float) else str(value)


def _training_data(config, workdir: pathlib.Path) -> list[str]:
  ready = sources.default_ready_dir(config, str(workdir))
  if config.data.source == formats.DEMO:  # the demo's root holds its raw files and ready/
    ready = os.path.join(ready, "ready")
  lines = []
  if config.data.source == "demo":
    lines.append("The project's own procedurally generated demo data set (coloured shapes and textures "
                 "whose look carries the emotion, explanations from a small grammar; no real artworks), "
                 "run through the same ingestion code as ArtEmis. It says nothing about real paintings.")
  else:
    lines.append(f"ArtEmis ({config.data.source}) annotations of WikiArt paintings: each annotator "
                 "chose one of nine emotions and wrote why.")
  if not records.is_complete(ready):
    return lines + [f"(The prepared data set {ready} was not found when this card was written, so its "
                    "sizes are not given.)"]
  meta = records.load_meta(ready)
  report = records.load_report(ready)
  lines += ["", "| split | images | annotations | images with a dominant emotion (> half) |",
            "| --- | --- | --- | --- |"]
  for split, s in meta["splits"].items():
    if s["images"]:
      lines.append(f"| {split} | {s['images']:,} | {s['annotations']:,} | {s['dominant_half']:,} |")
  inputs = ", ".join(f"{os.path.basename(i['path'])} (sha256 {i['sha256'][:12]}...)"
                     for i in meta["source"].get("inputs", []))
  lines += ["", f"Source files: {inputs or 'not recorded'}; images at {meta['image_size']}x{meta['image_size']}; "
            f"split {'/'.join(str(x) for x in meta.get('split_loads', []))} by painting with seed "
            f"{meta.get('seed')}. Rows or files skipped in preparation: {len(report.get('skipped', []))}."]
  return lines


def _metrics(workdir: pathlib.Path, exported_kind: str | None) -> list[str]:
  files = sorted(workdir.glob("metrics_*.json")) if workdir is not None else []
  if not files:
    return ["No evaluation was found in the run's directory (metrics_<split>.json): evaluate it with "
            "`python -m sevlm_jax.main --mode=evaluate` and export again."]
  keys = ["ACC", "EA", "EA_judge_heldout_accuracy", "Unique"]
  caption_keys = ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"]
  lines = ["| split | checkpoint | images | " + " | ".join(keys + caption_keys) + " |",
           "| --- " * (3 + len(keys) + len(caption_keys)) + "|"]
  kinds, judges = set(), set()
  for path in files:
    m = json.loads(path.read_text("utf-8"))
    judges.add((m.get("EA_judge") or {}).get("source", "trained"))  # older files: ours
    captions = m.get("captions", {})
    ckpt = m.get("checkpoint") or {}
    kinds.add(ckpt.get("kind"))
    cells = [m.get("split", path.stem[len("metrics_"):]), f"{ckpt.get('kind')} step {ckpt.get('step')}",
             str(m.get("num_with_dominant", m.get("num_images", "?")))]
    cells += [_fmt(m[k]) if m.get(k) is not None else "-" for k in keys]
    cells += [_fmt(captions[k]) if isinstance(captions.get(k), (int, float)) else "-" for k in caption_keys]
    lines.append("| " + " | ".join(cells) + " |")
  judge_text = {"trained": "the project's EA judge (a text classifier trained on the run's data)",
                "artemis": "ArtEmis's released text-to-emotion classifier (the paper's judge)"}
  lines += ["", "ACC counts images with a dominant emotion; EA asks "
            + " or ".join(judge_text.get(j, j) for j in sorted(judges))
            + " which emotion the generated explanation expresses; EA_judge_heldout_accuracy is the "
            "trained judge's own accuracy on held-out human explanations (none for ArtEmis's)."]
  if kinds - {exported_kind}:
    lines += ["", f"Note: these metrics are of checkpoint {', '.join(sorted(map(str, kinds)))}; this "
              f"directory holds {exported_kind}."]
  comparison = workdir / "comparison.json"
  if comparison.is_file():
    rows = json.loads(comparison.read_text("utf-8"))
    lines += ["", "The same recipe trained with every image blanked (what the model gets from the "
              "pictures): " + "; ".join(f"{name} ACC {_fmt(rows[name].get('ACC'))}, EA "
                                          f"{_fmt(rows[name].get('EA'))}" for name in rows if "ACC" in rows[name])
              + "."]
  return lines


def _applies(used: bool) -> str:
  return " (used by this model)" if used else " (not used by this model)"


def model_card(config, workdir: pathlib.Path, manifest: dict) -> str:
  """README.md of an export: what the model is, its data and metrics, its use and its licences."""
  model = config.model
  vad = manifest["vad_table"]
  kind = manifest["checkpoint"]["kind"]
  pretrained = [f"{name} weights from {config.pretrained[name]}" for name in ("clip", "gpt2")
                if config.pretrained[name]]
  lines = [
      "# SEVLM model (sevlm_jax export)", "",
      "Looks at an artwork, names the emotion it evokes (one of the nine ArtEmis emotions: "
      + ", ".join(vocab.EMOTIONS) + ") and explains why in one sentence:", "",
      "    <bos> the emotion is {emotion} because {explanation}<eos>", "",
      "SEVLM (Zhang, Zheng, Wang, Guo, ECCV 2024), implemented in JAX/Flax by sevlm_jax: a CLIP ViT "
      f"vision tower ({model.vision.layers} layers, width {model.vision.width}, {model.vision.image_size}x"
      f"{model.vision.image_size} images), a GPT-2 decoder with cross-attention ({model.decoder.layers} layers, "
      f"width {model.decoder.width}), VAD knowledge of every explanation token, a VAD head and a contrastive "
      f"head; {manifest['num_parameters']:,} parameters. Checkpoint: {kind}, step "
      f"{manifest['checkpoint']['step']}. Initialised from: "
      + ("; ".join(pretrained) if pretrained else "random weights (no pretrained towers)") + ".", "",
      "```python",
      "from sevlm_jax.inference.predictor import Predictor",
      "predictor = Predictor.from_pretrained(\"path/to/this/directory\")",
      "predictor.predict([\"painting.jpg\"])",
      "```", "",
      *released_lib.card_section(config, kind),
      "## Training data", "", *(released_lib.TRAINING_DATA if kind == released_lib.CHECKPOINT_KIND
                                else _training_data(config, workdir)), "",
      "## Evaluation", "", *_metrics(workdir, kind), "",
      "## Intended use", "",
      "Research on affective, explainable image description of visual art: studying how a small model links "
      "what is depicted to the emotions people report, and comparing methods. Emotions evoked by art are "
      "subjective: the model reproduces what its annotators tended to say, with their biases, and often "
      "disagrees with any one viewer. It is not meant for judging people, their mental state or their "
      "work, nor for any decision about a person.", "",
      "## The EA figure's caveat", "",
      "EA is only as good as its judge: a text classifier the project trains on the training explanations "
      "(ArtEmis's own judge is a pickled PyTorch module). Read EA beside the judge's held-out accuracy "
      "above; it is not comparable with EA figures computed with another judge (such as the paper's). "
      "A judge that reads content words can count an explanation as aligned because it names what "
      "usually goes with the emotion, not because it expresses it.", "",
      "## Licences", "",
      "- The code (sevlm_jax): Apache-2.0. The weights derive from the data and pretrained weights "
      "marked used below, whose terms apply to them too.",
      f"- ArtEmis annotations (https://www.artemisdataset.org){_applies(config.data.source != 'demo')}: "
      "obtained through the request form the ArtEmis README links (github.com/optas/artemis, README.md, "
      "\"Dataset\"), on accepting the data set's terms of service (its author's words: github.com/optas/"
      "artemis issue 3). Those terms are not restated here: read them where you obtained the data, and "
      "check them before sharing a model trained on it. The ArtEmis code is MIT (github.com/optas/"
      "artemis, LICENSE); that licence covers the code, not the annotations.",
      f"- WikiArt images{_applies(config.data.source != 'demo')}: ArtEmis annotates paintings from "
      "WikiArt.org; each image remains under its rights holder's terms and WikiArt.org's terms of use "
      "(https://www.wikiart.org/en/terms-of-use). The collection in the layout ArtEmis's code reads "
      "({art_style}/{painting}.jpg) is distributed by the ArtGAN project for non-commercial research "
      "only, its users agreeing to WikiArt.org's terms (github.com/cs-chan/ArtGAN, \"WikiArt Dataset/"
      "README.md\"). No image is part of this directory.",
      f"- CLIP ViT-B/16 weights (OpenAI){_applies(bool(config.pretrained.clip))}: MIT, the licence of "
      "the openai/CLIP repository.",
      f"- distilgpt2 weights (Hugging Face){_applies(bool(config.pretrained.gpt2))}: Apache-2.0.",
      "- GPT-2's BPE files in tokenizer/: OpenAI's, MIT.",
  ]
  if vad["demo_lexicon"]:
    lines.append("- VAD table: made from the project's own demo lexicon (written for sevlm_jax, free to share).")
  else:
    lines.append("- VAD table: made from the lexicon " + str(vad.get("lexicon")) + " (sha256 "
                 + str(vad.get("lexicon_sha256")) + "). **Warning:** "
                 + NRC_VAD_WARNING.format(what="included in this directory" if vad["included"]
                                          else "not included: pass lexicon= to from_pretrained",
                                          lexicon=vad.get("lexicon")) + ".")
  return card_metadata.front_matter(config, workdir, manifest) + "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- reading
