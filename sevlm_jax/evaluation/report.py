"""A self-contained HTML report of an evaluation: <workdir>/report_<split>.html.

It shows the headline metrics (with the EA judge's own held-out accuracy beside EA), accuracy per
emotion, the confusion matrix, the training curves of <workdir>/metrics.jsonl, a gallery of the
split's artworks with the prediction beside the human annotations (filterable by emotion and by
right / wrong), and the worst cases.

The page needs no network: CSS and the few lines of JS are inline (the page's skeleton, CSS and JS
are sevlm_jax/evaluation/assets/report.*) and the charts are SVG drawn here. Thumbnails are PNG
files in <workdir>/report_<split>/, linked relatively rather than embedded as base64: base64 adds a
third to every image and puts all of them into one file the browser must parse before it shows
anything, while links keep the HTML small and let images load lazily. Move the folder together
with the HTML.

Worst cases are the wrong predictions (the emotion differs from the annotators' dominant one or
names none) whose explanation has the least word overlap with the closest human explanation
(unigram F1, the best over the image's annotations): wrong about the emotion and far from anything
a person wrote. Overlap needs no second model pass, so the report can be rebuilt from the saved
predictions alone; a confidence ranking would need the model again.

With <workdir>/trace_<split>.npz (evaluation.trace_files: the gallery's images decoded in the
traced loop), each card's explanation words can be clicked: the word's attention map over the
image patches is drawn over the thumbnail as red squares (opacity relative to the map's peak; the
maps go into the page as uint8 base64, a quarter of float32), and a chart shows the VAD head's
valence, arousal and dominance per explanation token.

Every text from the data or the model goes through html.escape: explanations are user data.
"""

import base64
import html
import io
import json
import math
import os
import re
import string
from typing import Any, Iterable, Sequence
from urllib.parse import quote

import numpy as np
from PIL import Image

from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.data import records
from sevlm_jax.evaluation import metrics as metrics_lib
from sevlm_jax.evaluation import trace_files

MAX_GALLERY = 600  # items in the gallery (a full ArtEmis test split has ~8,000); worst cases always show
WORST_K = 12
THUMB_SIZE = 128  # longest side of a thumbnail in pixels; smaller images are kept as they are
EAGER_IMAGES = 48  # the first thumbnails load at once, the rest when scrolled to
NO_EMOTION = "unparseable"  # data-pred of a prediction that names none of the nine emotions
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def esc(value: Any) -> str:
  """Text for HTML content or a quoted attribute."""
  return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
  """A metric as text: floats rounded, None as a dash."""
  if value is None:
    return "&ndash;"
  if isinstance(value, float):
    return f"{value:.{digits}f}" if math.isfinite(value) else esc(value)
  return esc(value)


# ----------------------------------------------------------------------------- data


def load_curves(path: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
  """{split: {metric: [(step, value), ...] by step}} of a metrics.jsonl (missing file: {}).

  A resumed run logs some steps twice; the last line of a step wins. Unreadable lines are skipped:
  a run killed mid-write may leave half a line.
  """
  curves: dict[str, dict[str, dict[int, float]]] = {}
  if not io_utils.as_path(path).exists():
    return {}
  with io_utils.as_path(path).open(encoding="utf-8") as f:
    for line in f:
      try:
        row = json.loads(line)
        split, step = str(row["split"]), int(row["step"])
      except (ValueError, KeyError, TypeError):
        continue
      for name, value in row.items():
        if name in ("split", "step", "time") or not isinstance(value, (int, float)):
          continue
        if math.isfinite(value):
          curves.setdefault(split, {}).setdefault(name, {})[step] = float(value)
  return {split: {name: sorted(points.items()) for name, points in by_name.items()}
          for split, by_name in curves.items()}


_WORD = re.compile(r"[^\W_]+")


def unigram_f1(hypothesis: str, reference: str) -> float:
  """F1 of the lower-cased word multisets of two texts (0.0 when either is empty)."""
  hyp, ref = _WORD.findall(hypothesis.lower()), _WORD.findall(reference.lower())
  if not hyp or not ref:
    return 0.0
  common = sum(min(hyp.count(w), ref.count(w)) for w in set(hyp))
  if common == 0:
    return 0.0
  precision, recall = common / len(hyp), common / len(ref)
  return 2 * precision * recall / (precision + recall)


def best_overlap(explanation: str, references: Sequence[str]) -> float:
  return max((unigram_f1(explanation, r) for r in references), default=0.0)


def gallery_items(preds: Sequence[dict], annotations: Sequence[dict]) -> list[dict[str, Any]]:
  """One entry per prediction, with its outcome, the human annotations and the word overlap.

  preds: predictions_<split>.json entries (image_index, emotion, explanation, dominant_emotion,
  judge_emotion); annotations: the split's records without pixels, indexed by image_index.
  outcome: 'right' / 'wrong' against the dominant emotion, 'none' for an image without one (ACC
  leaves those out).
  """
  items = []
  for p in preds:
    rec = annotations[p["image_index"]]
    predicted = metrics_lib.match_emotion(p.get("emotion", ""))
    dominant = p.get("dominant_emotion")
    if dominant is None:
      outcome = "none"
    else:
      outcome = "right" if predicted == vocab.emotion_index(dominant) else "wrong"
    humans = [(vocab.EMOTIONS[e], u) for e, u in zip(rec["emotions"], rec["utterances"])]
    items.append({
        "index": int(p["image_index"]),
        "image_id": p.get("image_id", rec.get("image_id", "")),
        "emotion_text": p.get("emotion", ""),
        "predicted": vocab.EMOTIONS[predicted] if predicted >= 0 else NO_EMOTION,
        "dominant": dominant,
        "judge": p.get("judge_emotion"),
        "outcome": outcome,
        "explanation": p.get("explanation", ""),
        "annotations": humans,
        "overlap": best_overlap(p.get("explanation", ""), [u for _, u in humans]),
    })
  return items


def worst_cases(items: Sequence[dict], k: int = WORST_K) -> list[dict]:
  """The k wrong predictions with the lowest word overlap (ties: lower image index first)."""
  wrong = [it for it in items if it["outcome"] == "wrong"]
  return sorted(wrong, key=lambda it: (it["overlap"], it["index"]))[:k]


def thumbnail_png(pixels: np.ndarray, max_side: int = THUMB_SIZE) -> bytes:
  """PNG bytes of a uint8[H, W, 3] image, shrunk so that its longest side is at most max_side."""
  image = Image.fromarray(np.asarray(pixels, np.uint8))
  image.thumbnail((max_side, max_side), Image.BICUBIC)
  buf = io.BytesIO()
  image.save(buf, format="PNG", optimize=True)
  return buf.getvalue()


def write_thumbnails(ready_dir: str, split: str, indices: Iterable[int], out_dir: str) -> None:
  """<out_dir>/<index>.png for each image index of the split."""
  io_utils.as_path(out_dir).mkdir(parents=True, exist_ok=True)
  source = records.load_split(ready_dir, split)
  for i in indices:
    io_utils.write_bytes_atomic(os.path.join(out_dir, f"{i}.png"), thumbnail_png(source[i]["image"]))


# ----------------------------------------------------------------------------- charts and tables


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  return [lo + (hi - lo) * k / (n - 1) for k in range(n)]


def line_chart_svg(title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *,
                   width: int = 460, height: int = 240, x_label: str = "step",
                   css_class: str = "chart") -> str:
  """An inline SVG line chart of named (x, y) series (points marked; a single point shows too)."""
  left, right, top, bottom = 52, 12, 44, 40
  pw, ph = width - left - right, height - top - bottom
  points = [(x, y) for _, pts in series for x, y in pts]
  parts = [f'<svg class="{css_class}" role="img" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}">',
           f'<title>{esc(title)}</title>',
           f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" class="ctitle">{esc(title)}</text>']
  if not points:
    parts.append(f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle">no data</text>')
    return "".join(parts) + "</svg>"
  x0, x1 = min(x for x, _ in points), max(x for x, _ in points)
  y0, y1 = min(y for _, y in points), max(y for _, y in points)
  if x1 == x0:
    x0, x1 = x0 - 1, x1 + 1
  pad = (y1 - y0) * 0.05 or max(abs(y0) * 0.05, 0.05)
  y0, y1 = (max(y0 - pad, 0.0) if y0 >= 0 else y0 - pad), y1 + pad  # losses and scores stay >= 0

  def sx(x):
    return left + (x - x0) / (x1 - x0) * pw

  def sy(y):
    return top + (y1 - y) / (y1 - y0) * ph

  parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="plot"/>')
  for y in _ticks(y0, y1):
    parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" class="grid"/>'
                 f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
  for x in _ticks(x0, x1):
    parts.append(f'<text x="{sx(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{x:.4g}</text>')
  parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">{esc(x_label)}</text>')
  lx = left  # the legend: one row between the title and the plot
  for k, (name, pts) in enumerate(series):
    color = PALETTE[k % len(PALETTE)]
    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.8"/>')
    parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts]
    parts.append(f'<rect x="{lx}" y="{top - 16}" width="10" height="10" fill="{color}"/>'
                 f'<text x="{lx + 14}" y="{top - 7}">{esc(name)}</text>')
    lx += 24 + 6.5 * len(name)
  return "".join(parts) + "</svg>"


def curves_html(curves: dict) -> str:
  """Training loss (total and its terms) and validation ACC / BLEU-4 as two charts."""
  train = curves.get("train", {})
  losses = [(n, train[n]) for n in ["loss"] + sorted(k for k in train if k.startswith("loss_"))
            if n in train]
  val = curves.get("val", {})
  scores = [(n, val[n]) for n in ("acc", "bleu4") if n in val]
  if not losses and not scores:
    return "<p>No training curves: metrics.jsonl is missing or empty.</p>"
  return (line_chart_svg("training loss", losses) +
          line_chart_svg("validation ACC and BLEU-4", scores))


def metrics_table_html(results: dict) -> str:
  """Headline metrics, and caption scores on all images beside those whose emotion is right."""
  judge = results.get("EA_judge") or {}
  if judge.get("source") == "artemis":  # ArtEmis's own classifier: no held-out figure of ours
    ea_meaning = (f"ArtEmis's released classifier ({judge.get('classifier')}, vocabulary "
                  f"{judge.get('vocabulary')}) names the explanation's emotion: it is the dominant one")
    heldout = ("EA judge held-out accuracy", "not ours",
               "none measured here for ArtEmis's classifier; its authors report about 63% (9-way) on "
               "ArtEmis's test split")
  else:
    ea_meaning = ("the EA judge's emotion for the explanation is the dominant one"
                  + (f" (the judge trained here, {judge['path']})" if judge.get("path") else ""))
    heldout = ("EA judge held-out accuracy", results.get("EA_judge_heldout_accuracy"),
               "how often the judge itself is right on held-out human utterances: read EA against it")
  rows = [("ACC", results.get("ACC"), "emotion accuracy over images with a dominant emotion"),
          ("EA", results.get("EA"), ea_meaning),
          heldout,
          ("Unique", results.get("Unique"), "distinct explanations / all explanations")]
  out = ['<table class="metrics"><tr><th>metric</th><th>value</th><th>meaning</th></tr>']
  out += [f"<tr><td>{esc(n)}</td><td class=num>{fmt(v)}</td><td>{esc(d)}</td></tr>" for n, v, d in rows]
  out.append("</table>")
  captions, filtered = results.get("captions", {}), results.get("captions_filtered", {})
  names = [n for n in list(metrics_lib.CAPTION_METRICS) + ["SPICE"] if n in captions]
  out.append('<table class="metrics"><tr><th>caption metric</th><th>all images</th>'
             '<th>emotion right only</th></tr>')
  out += [f"<tr><td>{esc(n)}</td><td class=num>{fmt(captions.get(n))}</td>"
          f"<td class=num>{fmt(filtered.get(n))}</td></tr>" for n in names]
  out.append(f"<tr><td>images scored</td><td class=num>{fmt(captions.get('num_items'))}</td>"
             f"<td class=num>{fmt(filtered.get('num_items'))}</td></tr></table>")
  return "".join(out)


def per_emotion_html(results: dict) -> str:
  out = ['<table class="metrics"><tr><th>dominant emotion</th><th>images</th><th>accuracy</th>'
         '<th></th></tr>']
  for name, row in results.get("per_emotion_accuracy", {}).items():
    acc = row.get("accuracy")
    bar = f'<div class="bar" style="width:{100 * acc:.1f}%"></div>' if acc is not None else ""
    out.append(f"<tr><td>{esc(name)}</td><td class=num>{fmt(row.get('support'))}</td>"
               f"<td class=num>{fmt(acc)}</td><td class=barcell>{bar}</td></tr>")
  return "".join(out) + "</table>"


def confusion_html(results: dict) -> str:
  """Rows: the annotators' dominant emotion; columns: the predicted one (last: names none).

  A cell's shade is its share of the row, so rare emotions read as clearly as frequent ones.
  """
  names = list(results.get("emotions", vocab.EMOTIONS))
  matrix = results.get("confusion_matrix", [])
  out = ['<table class="confusion"><tr><th>dominant \\ predicted</th>']
  out += [f"<th>{esc(n)}</th>" for n in names + ["(none)"]]
  out.append("</tr>")
  for i, row in enumerate(matrix):
    total = sum(row) or 1
    out.append(f"<tr><th>{esc(names[i])}</th>")
    for j, count in enumerate(row):
      share = count / total
      cls = ' class="diag"' if i == j else ""
      ink = ";color:#fff" if share > 0.55 else ""  # legible on the darkest shades
      out.append(f'<td{cls} style="background:rgba(31,119,180,{share:.3f}){ink}" '
                 f'title="{esc(names[i])} &rarr; {esc((names + ["(none)"])[j])}: {count}">{count}</td>')
    out.append("</tr>")
  return "".join(out) + "</table>"


# ----------------------------------------------------------------------------- gallery


def attention_data(attention_WxGxG: np.ndarray) -> str:
  """The maps of a card's words as base64 of uint8 (each map scaled to its own peak = 255): what
  the overlay draws (opacity relative to the peak), at a quarter of float32's size."""
  maps = np.asarray(attention_WxGxG, np.float32).reshape(len(attention_WxGxG), -1)
  peak = np.maximum(maps.max(axis=1, keepdims=True), 1e-12) if maps.size else 1.0
  return base64.b64encode(np.round(255 * maps / peak).astype(np.uint8).tobytes()).decode("ascii")


def vad_chart_svg(trace: dict) -> str:
  """The VAD head's valence, arousal and dominance per explanation token, as a line chart."""
  vad = np.asarray(trace["vad"], np.float32).reshape(-1, 3)
  series = [(name, [(float(t), float(vad[t, d])) for t in range(len(vad))])
            for d, name in enumerate(("valence", "arousal", "dominance"))]
  return line_chart_svg("VAD per explanation token", series, width=340, height=170,
                        x_label="token (" + " | ".join(trace["tokens"])[:60] + ")",
                        css_class="chart vad-chart")


def card_html(item: dict, thumbs: str, eager: bool) -> str:
  """One artwork: thumbnail, prediction, and the human annotations; with a trace, the words of
  the explanation can be clicked to draw their attention maps over the thumbnail, and the VAD
  per token is a chart."""
  src = f"{quote(thumbs)}/{item['index']}.png"
  loading = "eager" if eager else "lazy"
  humans = "".join(f"<li><b>{esc(e)}</b>: {esc(u)}</li>" for e, u in item["annotations"])
  judge = f" &middot; judge reads: {esc(item['judge'])}" if item.get("judge") else ""
  dominant = item["dominant"] if item["dominant"] is not None else "none (no majority)"
  explanation = (f"&ldquo;{esc(item['explanation'])}&rdquo;" if item["explanation"]
                 else "(no explanation)")
  trace, data, overlay, vad = item.get("trace"), "", "", ""
  if trace is not None and len(trace["words"]):
    grid = trace["attention"].shape[-1]
    data = f' data-grid="{grid}" data-attn="{attention_data(trace["attention"])}"'
    words = " ".join(f'<span class="w" data-k="{k}" role="button" tabindex="0">{esc(w)}</span>'
                     for k, w in enumerate(trace["words"]))
    explanation = (f'{explanation}<div class="words" title="click a word: where the model looked'
                   f' while writing it">{words}</div>')
    overlay = f'<svg class="attn" viewBox="0 0 {grid} {grid}" preserveAspectRatio="none" hidden></svg>'
  if trace is not None and len(trace["vad"]):
    vad = f'<details class="vad"><summary>VAD per token</summary>{vad_chart_svg(trace)}</details>'
  return (
      f'<div class="item {item["outcome"]}" data-true="{esc(item["dominant"] or "none")}" '
      f'data-pred="{esc(item["predicted"])}" data-outcome="{item["outcome"]}"{data}>'
      f'<div class="pic"><img src="{src}" alt="{esc(item["image_id"])}" loading="{loading}" '
      f'width="{THUMB_SIZE}" height="{THUMB_SIZE}">{overlay}</div>'
      f'<div class="text"><div class="id">{esc(item["image_id"])} (#{item["index"]})</div>'
      f'<div class="pred"><span class="tag {item["outcome"]}">{item["outcome"]}</span> '
      f'predicted <b>{esc(item["emotion_text"] or "(nothing)")}</b>, annotators: '
      f'<b>{esc(dominant)}</b>{judge}</div>'
      f'<div class="expl">{explanation}</div>'
      f'<div class="overlap">word overlap with the closest annotation: {item["overlap"]:.2f}</div>'
      f'{vad}<details><summary>{len(item["annotations"])} human annotations</summary>'
      f'<ul>{humans}</ul></details></div></div>')


def filters_html() -> str:
  """The gallery's filter controls; the inline script reads data-filter and the items' data-*."""
  options = "".join(f'<option value="{esc(n)}">{esc(n)}</option>' for n in vocab.EMOTIONS)
  return (
      '<div class="filters">'
      '<label>annotators\' emotion <select data-filter="true" id="f-true">'
      f'<option value="all">all</option>{options}<option value="none">none (no majority)</option>'
      '</select></label> '
      '<label>predicted emotion <select data-filter="pred" id="f-pred">'
      f'<option value="all">all</option>{options}<option value="{NO_EMOTION}">names none</option>'
      '</select></label> '
      '<label>result <select data-filter="outcome" id="f-outcome"><option value="all">all</option>'
      '<option value="right">right</option><option value="wrong">wrong</option>'
      '<option value="none">no dominant emotion</option></select></label> '
      '<span class="count"><span id="shown"></span> shown</span></div>')


# The page's skeleton ($names filled by render_report), its CSS and the filter / attention script.
_PAGE = string.Template(io_utils.package_text(__package__, "report.html"))
_STYLE = io_utils.package_text(__package__, "report.css")
_SCRIPT = io_utils.package_text(__package__, "report.js")


def _ea_rule(results: dict) -> str:
  """', EA over N images (rule: ...)' where EA's dominant rule differs from ACC's, else ''."""
  rule = results.get("EA_dominant_rule")
  if not rule or rule.startswith(f"{results.get('dominant_rule')} over the histogram ACC reads"):
    return ""
  return f", EA over {fmt(results.get('num_with_EA_dominant'))} (rule: {esc(rule)})"


def render_report(results: dict, gallery: Sequence[dict], worst: Sequence[dict], curves: dict, *,
                  thumbs: str, total: int, images_blanked: bool = False) -> str:
  """The whole page as a string (no file access)."""
  split = results.get("split", "")
  ckpt = results.get("checkpoint") or {}
  summary = (f"{fmt(results.get('num_images'))} images, {fmt(results.get('num_with_dominant'))} with "
             f"a dominant emotion (rule: {esc(results.get('dominant_rule', ''))}){_ea_rule(results)}; "
             f"checkpoint {esc(ckpt.get('kind'))} at step {esc(ckpt.get('step'))}.")
  banner = ('<p class="banner">This model was trained and evaluated with every image blanked (the '
            'image-blind control); the thumbnails show what it did not see.</p>'
            if images_blanked else "")
  shown_note = (f"the first {len(gallery)} of {total} images (by index)" if len(gallery) < total
                else f"all {total} images")
  worst_cards = "".join(card_html(it, thumbs, True) for it in worst)
  gallery_cards = "".join(card_html(it, thumbs, k < EAGER_IMAGES) for k, it in enumerate(gallery))
  return _PAGE.substitute(
      style=_STYLE, script=_SCRIPT, split=esc(split), summary=summary, banner=banner,
      metrics=metrics_table_html(results), per_emotion=per_emotion_html(results),
      confusion=confusion_html(results), curves=curves_html(curves),
      worst=worst_cards or "<p>No wrong predictions.</p>", shown_note=shown_note,
      filters=filters_html(), gallery=gallery_cards)


def write_report(workdir: str, split: str, results: dict, preds: Sequence[dict], ready_dir: str, *,
                 images_blanked: bool = False, max_gallery: int = MAX_GALLERY,
                 worst_k: int = WORST_K, traces: dict[int, dict] | None = None) -> str:
  """Writes <workdir>/report_<split>.html and its thumbnails; returns the HTML's path.

  traces: image_index -> evaluation.trace_files' entry (attention per word, VAD per token), drawn
  on the cards of those images."""
  items = gallery_items(preds, records.load_annotations(ready_dir, split))
  for it in items:
    if traces and it["index"] in traces:
      it["trace"] = traces[it["index"]]
  items.sort(key=lambda it: it["index"])
  gallery, worst = items[:max_gallery], worst_cases(items, worst_k)
  thumbs = f"report_{split}"
  write_thumbnails(ready_dir, split, sorted({it["index"] for it in gallery + worst}),
                   os.path.join(workdir, thumbs))
  page = render_report(results, gallery, worst, load_curves(os.path.join(workdir, "metrics.jsonl")),
                       thumbs=thumbs, total=len(items), images_blanked=images_blanked)
  path = os.path.join(workdir, f"report_{split}.html")
  io_utils.write_bytes_atomic(path, page.encode("utf-8"))  # last, so that its thumbnails exist when it does
  return path


def write_report_from_files(workdir: str, split: str, ready_dir: str, **kwargs) -> str:
  """The report rebuilt from <workdir>/metrics_<split>.json and predictions_<split>.json, with
  trace_<split>.npz when there is one."""
  with io_utils.as_path(workdir, f"metrics_{split}.json").open(encoding="utf-8") as f:
    results = json.load(f)
  with io_utils.as_path(workdir, f"predictions_{split}.json").open(encoding="utf-8") as f:
    preds = json.load(f)
  trace_path = os.path.join(workdir, f"trace_{split}.npz")
  if "traces" not in kwargs and io_utils.as_path(trace_path).exists():
    kwargs["traces"] = trace_files.load_traces(trace_path)
  return write_report(workdir, split, results, preds, ready_dir, **kwargs)
