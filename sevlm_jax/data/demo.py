"""A small procedurally generated art-and-emotion data set, made on first use.

`write_raw(raw_dir)` writes ArtEmis-format raw files (a CSV and
{art_style}/{painting}.jpg images); data.sources.ensure_demo_dataset(root) writes them to
root/raw and runs exactly the ingestion used for real ArtEmis (prepare.prepare_ready) into
root/ready. Everything is a pure function of the seed; no download.

How emotion lives in the pictures. Each image is drawn for one intended
emotion (classes balanced) from four visual attributes: the colour of its
shapes, its overall brightness, the kind of shape, and the background texture.
Every emotion has a prototype (below); each attribute follows the prototype
with probability 0.9 and is random otherwise, so the attributes predict the
emotion well but not perfectly, and only through the pixels.

  emotion         shape colours    brightness  shapes     texture
  amusement       yellow, pink     bright      circles    checkered
  awe             blue, purple     bright      triangles  smooth
  contentment     green, blue      pale        waves      smooth
  excitement      orange, yellow   bright      zigzags    speckled
  anger           red              dark        zigzags    speckled
  disgust         brown, green     dark        circles    blotchy
  fear            purple, grey     dark        triangles  blotchy
  sadness         blue, grey       dark        stripes    smooth
  something else  pink, brown      pale        squares    checkered

Annotators (5 per image) mostly pick the intended emotion (2 to 5 of them,
usually 3 or 4); the others mostly pick the emotion whose prototype best
matches the image's attributes among the rest, sometimes any other one. So
most images have a dominant emotion and most have two distinct emotions
(training pairs exist). Each annotator writes a short explanation from a small
grammar naming what is really in the image (brightness, colour, shapes,
background texture and colour) and a phrase for the emotion they chose, e.g.
"the dark blue stripes feel lonely and cold". Most phrases are shared with
other emotions ("make me feel uneasy" for any negative one, "catch my eye"
for any), as in ArtEmis, so a text classifier reading the explanations (the
EA judge) is right about 73% of the time, not always. Sequences fit in 24
tokens. A model that ignores the image cannot beat chance on the emotion, and
cannot name the colours and shapes.
"""

import csv
import os
import pathlib
import shutil

import numpy as np
from PIL import Image, ImageDraw

from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.data import records

DEMO_VERSION = 3  # 3: emotion phrases shared across emotions
DEFAULT_NUM_IMAGES = 2700  # 2295 / 135 / 270 images in train / val / test
RAW_SIZE = 64  # drawn at 64 x 64, stored as JPEG, resized by the ingestion like any painting
CSV_NAME = "artemis_demo.csv"

COLOURS = {
    "red": (205, 35, 35), "orange": (240, 135, 25), "yellow": (240, 215, 40),
    "green": (45, 160, 65), "blue": (40, 85, 210), "purple": (135, 55, 175),
    "pink": (240, 140, 190), "brown": (125, 80, 40), "grey": (130, 130, 130),
}
BRIGHTNESS = ("bright", "pale", "dark")
SHAPES = ("circles", "squares", "triangles", "stripes", "waves", "zigzags")
TEXTURES = ("smooth", "speckled", "checkered", "blotchy")
STYLES = ("Synthetic_Abstraction", "Synthetic_Geometry", "Synthetic_Texture")

PROTOTYPES = {  # emotion -> (shape colours, brightness, shape, texture)
    "amusement": (("yellow", "pink"), "bright", "circles", "checkered"),
    "awe": (("blue", "purple"), "bright", "triangles", "smooth"),
    "contentment": (("green", "blue"), "pale", "waves", "smooth"),
    "excitement": (("orange", "yellow"), "bright", "zigzags", "speckled"),
    "anger": (("red",), "dark", "zigzags", "speckled"),
    "disgust": (("brown", "green"), "dark", "circles", "blotchy"),
    "fear": (("purple", "grey"), "dark", "triangles", "blotchy"),
    "sadness": (("blue", "grey"), "dark", "stripes", "smooth"),
    "something else": (("pink", "brown"), "pale", "squares", "checkered"),
}
# The emotion phrase ending each explanation. As in ArtEmis, where "it makes me feel uneasy" is written
# for fear, disgust and sadness alike, most phrases do not name one emotion: an annotator writes one of
# its emotion's own phrases with probability PHRASE_MIX["own"], one shared by its valence group
# (positive / negative) with PHRASE_MIX["group"], else one any emotion may use. So a text classifier
# (the EA judge) must also read the picture's content words, and it is right well short of always.
OWN_PHRASES = {
    "amusement": ("look playful and silly", "are funny and cheerful"),
    "awe": ("feel vast and majestic", "make me feel small"),
    "contentment": ("feel calm and peaceful", "put me at ease"),
    "excitement": ("are full of energy", "make my heart race"),
    "anger": ("look harsh and aggressive", "make me furious"),
    "disgust": ("look dirty and rotten", "feel slimy and gross"),
    "fear": ("look menacing and eerie", "make me nervous"),
    "sadness": ("feel lonely and cold", "look gloomy and hopeless"),
    "something else": ("are strange and confusing", "leave me puzzled"),
}
GROUP_PHRASES = {
    "positive": ("make me smile", "look lovely", "lift my mood"),
    "negative": ("make me feel uneasy", "are unpleasant", "feel heavy and dark"),
    "other": ("are hard to describe",),
}
COMMON_PHRASES = ("catch my eye", "stay with me", "are very striking", "make me think")
PHRASE_MIX = {"own": 0.3, "group": 0.3, "common": 0.4}  # the judge: ~0.73 held out (0.72 to 0.75 over seeds)


def valence_group(emotion: str) -> str:
  """positive, negative or other: ArtEmis's ternary grouping (the first four emotions are
  positive, the next four negative, the last other)."""
  index = vocab.EMOTIONS.index(emotion)
  return "positive" if index < 4 else "negative" if index < 8 else "other"


def phrases_for(emotion: str) -> tuple[tuple[str, ...], ...]:
  """The phrases an annotator of `emotion` chooses from, in PHRASE_MIX's order (own, group, common)."""
  return OWN_PHRASES[emotion], GROUP_PHRASES[valence_group(emotion)], COMMON_PHRASES


def sample_phrase(emotion: str, rng: np.random.Generator) -> str:
  pools = phrases_for(emotion)
  pool = pools[int(rng.choice(len(pools), p=list(PHRASE_MIX.values())))]
  return str(pool[int(rng.integers(len(pool)))])


TEMPLATES = (
    "the {brightness} {colour} {shape} {phrase}",
    "the {colour} {shape} on the {texture} background {phrase}",
    "{brightness} {colour} {shape} on {background} {phrase}",
    "the {texture} background and {colour} {shape} {phrase}",
)
KEEP_PROTOTYPE = 0.9
MAIN_VOTES = ((2, 0.15), (3, 0.40), (4, 0.35), (5, 0.10))  # annotators choosing the intended emotion
SECONDARY = 0.25  # otherwise: the best-matching other emotion with this probability, else any other


# ----------------------------------------------------------------------------- content

def sample_attributes(emotion: str, rng: np.random.Generator) -> dict:
  """Visual attributes of one image drawn for `emotion`."""
  colours, brightness, shape, texture = PROTOTYPES[emotion]

  def pick(proto, every):
    return str(rng.choice(proto)) if rng.random() < KEEP_PROTOTYPE else str(rng.choice(every))

  attrs = {"colour": pick(colours, list(COLOURS)), "brightness": pick([brightness], BRIGHTNESS),
           "shape": pick([shape], SHAPES), "texture": pick([texture], TEXTURES)}
  attrs["background"] = str(rng.choice([c for c in COLOURS if c != attrs["colour"]]))
  return attrs


def prototype_match(attrs: dict, emotion: str) -> int:
  colours, brightness, shape, texture = PROTOTYPES[emotion]
  return ((attrs["colour"] in colours) + (attrs["brightness"] == brightness) + (attrs["shape"] == shape)
          + (attrs["texture"] == texture))


def annotate(emotion: str, attrs: dict, rng: np.random.Generator, annotators: int) -> list[tuple[str, str]]:
  """(emotion, explanation) of each annotator of one image."""
  others = [e for e in vocab.EMOTIONS if e != emotion]
  scores = np.array([prototype_match(attrs, e) for e in others])
  best = [e for e, s in zip(others, scores) if s == scores.max()]
  secondary = str(rng.choice(best))
  votes, probs = zip(*MAIN_VOTES)
  main = min(annotators, int(rng.choice(votes, p=probs)))
  chosen = [emotion] * main
  for _ in range(annotators - main):
    chosen.append(secondary if rng.random() < SECONDARY else str(rng.choice(others)))
  chosen = [chosen[i] for i in rng.permutation(len(chosen))]
  out = []
  for e in chosen:
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    phrase = sample_phrase(e, rng)
    out.append((e, template.format(phrase=phrase, **attrs)))
  return out


def _texture(name: str, bg: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  if name == "smooth":  # vertical gradient
    return bg * np.linspace(0.75, 1.15, size)[:, None, None] * np.ones((1, size, 1))
  if name == "speckled":  # fine grain
    return bg + rng.normal(0.0, 45.0, (size, size, 1))
  if name == "checkered":
    cell = size // 8
    yy, xx = np.mgrid[:size, :size]
    dark = ((yy // cell + xx // cell) % 2 == 1)[..., None]
    return np.where(dark, bg * 0.6, bg)
  if name == "blotchy":  # large soft patches
    low = Image.fromarray(rng.uniform(0, 255, (4, 4)).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    return bg * (0.55 + 0.9 * np.asarray(low, np.float64)[..., None] / 255.0)
  raise ValueError(name)


def _draw_shapes(draw: ImageDraw.ImageDraw, shape: str, colour, rng: np.random.Generator, size: int) -> None:
  def jitter():
    return tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in colour)

  s = size / 64.0
  if shape in ("circles", "squares", "triangles"):
    for _ in range(int(rng.integers(3, 6))):
      r = rng.uniform(5, 10) * s
      x, y = rng.uniform(r, size - r, 2)
      if shape == "circles":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=jitter())
      elif shape == "squares":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=jitter())
      else:
        draw.polygon([(x, y - r * 1.2), (x - r * 1.1, y + r), (x + r * 1.1, y + r)], fill=jitter())
  elif shape == "stripes":
    for y in rng.choice(np.arange(2, size - 6, 4 * s), size=int(rng.integers(3, 5)), replace=False):
      draw.rectangle([0, y, size, y + rng.uniform(3, 5) * s], fill=jitter())
  else:  # waves, zigzags: three horizontal lines
    xs = np.arange(0, size + 1, 2 if shape == "waves" else 8 * s)
    for y0 in np.sort(rng.uniform(8 * s, size - 8 * s, 3)):
      if shape == "waves":
        ys = y0 + 5 * s * np.sin(2 * np.pi * xs / (20 * s) + rng.uniform(0, 2 * np.pi))
      else:
        ys = y0 + 6 * s * np.where(np.arange(len(xs)) % 2 == 0, -1.0, 1.0)
      draw.line(list(zip(xs.tolist(), ys.tolist())), fill=jitter(), width=max(2, int(round(4 * s))))


def render(attrs: dict, rng: np.random.Generator, size: int = RAW_SIZE) -> np.ndarray:
  """uint8[size, size, 3] picture of the attributes."""
  bg = np.asarray(COLOURS[attrs["background"]], np.float64)
  base = np.clip(_texture(attrs["texture"], bg, rng, size), 0, 255).astype(np.uint8)
  image = Image.fromarray(base)
  _draw_shapes(ImageDraw.Draw(image), attrs["shape"], COLOURS[attrs["colour"]], rng, size)
  x = np.asarray(image, np.float64)
  if attrs["brightness"] == "bright":
    x = x * 1.1 + 20
  elif attrs["brightness"] == "pale":
    x = x * 0.45 + 255 * 0.55
  else:
    x = x * 0.38
  return np.clip(x, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- raw files

def intended_emotions(num_images: int, seed: int) -> list[str]:
  """Balanced intended emotions: each class num_images // 9 or one more, in shuffled order."""
  order = np.random.default_rng([seed, 0]).permutation(num_images)
  return [vocab.EMOTIONS[int(k) % vocab.NUM_EMOTIONS] for k in order]


def write_raw(raw_dir, *, seed: int, num_images: int, annotators: int) -> pathlib.Path:
  """ArtEmis-format CSV + image folder under raw_dir (written atomically)."""
  raw_dir = pathlib.Path(raw_dir)
  params = {"version": DEMO_VERSION, "seed": seed, "num_images": num_images, "annotators": annotators}
  tmp = io_utils.temp_dir_beside(raw_dir)
  try:
    with open(tmp / CSV_NAME, "w", newline="", encoding="utf-8") as f:
      writer = csv.writer(f)
      writer.writerow(["art_style", "painting", "emotion", "utterance", "repetition"])
      for i, emotion in enumerate(intended_emotions(num_images, seed)):
        rng = np.random.default_rng([seed, 1, i])
        style = STYLES[int(rng.integers(len(STYLES)))]
        name = f"demo_{i:05d}"
        attrs = sample_attributes(emotion, rng)
        folder = tmp / "images" / style
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(render(attrs, rng)).save(folder / f"{name}.jpg", quality=95, subsampling=0)
        for e, text in annotate(emotion, attrs, rng, annotators):
          writer.writerow([style, name, e, text, annotators])
    records.write_json(tmp / "demo.json", params)
    if raw_dir.exists():
      shutil.rmtree(raw_dir)
    os.rename(tmp, raw_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return raw_dir
