"""A local web page for trying a trained run: drop an image, get the emotion and an explanation.

  python -m sevlm_jax.main --mode=serve --workdir=runs/demo [--port=8765]

Listens on 127.0.0.1 only (nothing else can reach it). Routes:

  GET  /              the page (inline CSS and JS; no network)
  GET  /api/health    {"status": "ok", "emotions": [...], "max_upload_bytes": N}
  POST /api/predict   body: the image file's bytes (any format PIL reads); ?emotion=NAME asks
                      for the explanation of that emotion. Answers {"emotion", "explanation",
                      "text", "emotions", "probabilities", "words", "attention", "tokens",
                      "vad"}: the generated sentence, the model's probabilities of the nine
                      emotions (first decoding step), per explanation word a GxG map of where
                      the model looked (rows sum to 1), per token its predicted VAD.

Bad requests get a JSON {"error": "..."}: 400 (not an image, empty), 411 (no Content-Length),
413 (over the upload limit, judged from the Content-Length, or over the pixel limit, judged from
the image header before anything is decoded, decompression bombs included). A refused body is
read and dropped first (up to DISCARD_LIMIT), so the client gets the whole answer; each refusal
is logged as one line with its reason. A client stalling for SOCKET_TIMEOUT_S is dropped. The
server goes on answering. Requests are served by threads; predictions run one at a time (the
predictor keeps a random-number state and one compiled batch shape).
"""

import http.server
import json
import threading
import urllib.parse
from typing import Any

from absl import logging
import numpy as np
from PIL import Image

from sevlm_jax import errors
from sevlm_jax import vocab
from sevlm_jax.data import images as images_lib

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a larger picture is refused before it is decoded (decompression bombs)
SOCKET_TIMEOUT_S = 30  # seconds a client may stall while sending
DISCARD_LIMIT = 256 * 1024 * 1024  # an oversize body up to this size is read and dropped


class RequestError(Exception):
  """A request the server refuses, with its HTTP status, a message for the user, and how many
  bytes of its body are still unread."""

  def __init__(self, status: int, message: str, unread: int = 0):
    super().__init__(message)
    self.status = status
    self.unread = unread


def decode_upload(body: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
  """An RGB PIL image of the uploaded bytes, or RequestError saying why not."""
  if not body:
    raise RequestError(400, "empty upload: send the image file's bytes as the request body")
  try:
    return images_lib.open_image(body, max_pixels)
  except images_lib.ImageTooLarge as e:
    raise RequestError(413, str(e)) from e
  except Exception as e:  # PIL raises several types for non-images and truncated data
    raise RequestError(400, f"not an image that can be read ({e.__class__.__name__}: {e}): upload "
                       "a PNG, JPEG, GIF, BMP or WebP file") from e


def prediction_json(predictor, image: Image.Image, emotion: str | None = None) -> dict[str, Any]:
  """The answer to /api/predict for one image: one traced decoding pass gives the sentence, the
  emotion probabilities (its first step), each explanation word's attention map (GxG, rounded)
  and each explanation token's VAD prediction. emotion: explain this one instead of the model's
  choice."""
  pred = predictor.analyse([image], emotion)[0]
  return {**pred, "emotions": list(vocab.EMOTIONS),
          "attention": np.round(pred["attention"], 5).tolist(),
          "vad": np.round(pred["vad"], 5).tolist()}


def requested_emotion(path: str) -> str | None:
  """The ?emotion= of /api/predict (absent or empty: the model's choice)."""
  values = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("emotion", [""])
  return values[-1] or None


def make_handler(predictor, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S):
  """A request handler class bound to one predictor."""
  lock = threading.Lock()
  page = PAGE.replace("__MAX_UPLOAD_BYTES__", str(max_upload_bytes)).replace(
      "__EMOTIONS__", json.dumps(list(vocab.EMOTIONS))).encode("utf-8")

  class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "sevlm"
    timeout = socket_timeout_s  # a stalled client frees its thread

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      logging.info("%s %s", self.address_string(), format % args)

    def log_request(self, code="-", size="-"):
      if str(code).isdigit() and int(code) >= 400:
        return  # a refusal is logged once, with its reason (_refuse)
      super().log_request(code, size)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
      try:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)
      except (BrokenPipeError, ConnectionResetError):
        self.close_connection = True  # the client left; nothing to answer

    def _refuse(self, status: int, message: str, unread: int = 0) -> None:
      """Answers with the error, then reads and drops a body of `unread` bytes the client may
      still be sending: closing on unread data would reset the connection, and the client
      would lose the answer (curl shows it cut, http.client raises BrokenPipeError)."""
      logging.warning("%s %s %s refused with %d: %s", self.address_string(), self.command,
                      self.path, status, message)
      self._json(status, {"error": message})
      if unread:
        self._discard(unread)

    def _json(self, status: int, obj: dict) -> None:
      self._send(status, json.dumps(obj).encode("utf-8"), "application/json")

    def do_GET(self):  # pylint: disable=invalid-name
      if self.path in ("/", "/index.html"):
        self._send(200, page, "text/html; charset=utf-8")
      elif self.path == "/api/health":
        self._json(200, {"status": "ok", "emotions": list(vocab.EMOTIONS),
                         "max_upload_bytes": max_upload_bytes})
      else:
        self._json(404, {"error": f"no such page: {self.path}"})

    def do_POST(self):  # pylint: disable=invalid-name
      if urllib.parse.urlsplit(self.path).path != "/api/predict":
        self._refuse(404, f"no such endpoint: {self.path} (POST images to /api/predict)",
                     unread=self._declared_length())
        return
      try:
        body = self._read_body()
        image = decode_upload(body)
        with lock:
          answer = prediction_json(predictor, image, requested_emotion(self.path))
      except RequestError as e:
        self._refuse(e.status, str(e), unread=e.unread)
        return
      except errors.InputError as e:
        self._refuse(400, str(e))
        return
      except Exception as e:  # pylint: disable=broad-except
        logging.exception("prediction failed")
        self._json(500, {"error": f"prediction failed: {e.__class__.__name__}: {e}"})
        return
      self._json(200, answer)

    def _read_body(self) -> bytes:
      """The body, after checking its declared length (an oversize one is refused unkept)."""
      length = self.headers.get("Content-Length")
      if length is None:
        self.close_connection = True
        raise RequestError(411, "the request needs a Content-Length header")
      try:
        n = int(length)
      except ValueError:
        n = -1
      if n < 0:
        self.close_connection = True
        raise RequestError(400, f"bad Content-Length: {length!r}")
      if n > max_upload_bytes:  # answered from the header; the body is dropped afterwards
        raise RequestError(413, f"upload too large: {n:,} bytes (limit {max_upload_bytes:,})",
                           unread=n)
      try:
        body = self.rfile.read(n)
      except TimeoutError:
        body = b""
      if len(body) != n:
        self.close_connection = True
        raise RequestError(400, f"incomplete upload: got {len(body)} of {n} bytes")
      return body

    def _declared_length(self) -> int:
      try:
        return max(int(self.headers.get("Content-Length", "0")), 0)
      except ValueError:
        return 0

    def _discard(self, n: int) -> None:
      """Reads and drops up to n bytes (at most DISCARD_LIMIT), then ends the connection."""
      self.close_connection = True
      n = min(n, DISCARD_LIMIT)
      try:
        while n > 0:
          chunk = self.rfile.read(min(n, 1 << 16))
          if not chunk:
            break
          n -= len(chunk)
      except (TimeoutError, ConnectionError):
        pass

  return Handler


def make_server(predictor, port: int = DEFAULT_PORT, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                socket_timeout_s: float = SOCKET_TIMEOUT_S) -> http.server.ThreadingHTTPServer:
  """A server on 127.0.0.1:port (0: a free port; see server.server_address) not yet serving."""
  server = http.server.ThreadingHTTPServer(
      (HOST, port), make_handler(predictor, max_upload_bytes, socket_timeout_s))
  server.daemon_threads = True
  return server


def warm_up(predictor) -> None:
  """Compiles the traced decoding loop now, so that the first upload answers quickly."""
  blank = Image.new("RGB", (predictor.image_size, predictor.image_size), (128, 128, 128))
  prediction_json(predictor, blank)


def serve(predictor, port: int = DEFAULT_PORT, name: str = "the model") -> None:
  """Serves the page for `predictor` (a predictor.Predictor) until Ctrl-C."""
  warm_up(predictor)
  try:
    server = make_server(predictor, port)
  except OSError as e:
    raise SystemExit(f"error: cannot listen on {HOST}:{port}: {e} (choose another --port)") from e
  url = f"http://{HOST}:{server.server_address[1]}/"
  logging.info("serving %s at %s", name, url)
  print(f"Open {url} in a browser (Ctrl-C stops).", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>SEVLM: what does this artwork make you feel?</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 820px; color: #222; padding: 0 12px; }
#drop { display: block; border: 2px dashed #999; border-radius: 8px; padding: 24px; text-align: center; cursor: pointer; }
#drop.over { border-color: #1f77b4; background: #eef5fb; }
#preview { max-width: 256px; max-height: 256px; display: block; margin: 16px auto; image-rendering: auto; }
#error { color: #b00020; font-weight: 600; }
#emotion { font-size: 24px; font-weight: 700; } #explanation { font-style: italic; margin: 6px 0 14px; }
.row { display: flex; align-items: center; gap: 8px; margin: 2px 0; }
.row .name { width: 120px; text-align: right; } .row .track { flex: 1; background: #eee; height: 14px; }
.row .fill { background: #1f77b4; height: 14px; } .row .p { width: 56px; font-variant-numeric: tabular-nums; }
.note { color: #666; font-size: 13px; margin-bottom: 4px; }
#picture { text-align: center; } #frame { position: relative; display: inline-block; margin: 16px auto; }
#frame #preview { margin: 0; } #overlay { position: absolute; left: 0; top: 0; width: 100%; height: 100%; pointer-events: none; }
.word { cursor: pointer; border-bottom: 1px dotted #999; margin-right: 4px; }
.word.on { background: #ffd7d7; border-bottom-color: #d62728; }
#vad-chart text { font-size: 10px; fill: #444; }
[hidden] { display: none !important; }
</style></head>
<body>
<h1>What does this artwork make you feel?</h1>
<p>Choose or drop an image: the model names the emotion it evokes (one of the nine ArtEmis
emotions) and explains why. Nothing leaves this computer.</p>
<p><label for="emotion-choice">Explain:</label> <select id="emotion-choice">
<option value="">the model's own choice of emotion</option></select></p>
<label id="drop" for="file">Drop an image here, or click to choose one
<input type="file" id="file" accept="image/*" hidden></label>
<p id="status"></p><p id="error" role="alert"></p>
<div id="picture"><div id="frame"><img id="preview" alt="the uploaded image" hidden>
<svg id="overlay" preserveAspectRatio="none" hidden></svg></div></div>
<div id="result" hidden>
  <div>the emotion is <span id="emotion"></span></div>
  <div id="explanation"></div>
  <div class="note">Click a word of the explanation to see where the model looked while writing
  it (its attention over the image patches, averaged over heads and layers):</div>
  <div id="words"></div>
  <div class="note">The valence, arousal and dominance the model predicts for each token of the
  explanation:</div>
  <svg id="vad-chart" width="420" height="130" role="img" aria-label="VAD per token"></svg>
  <div class="note">How likely the model finds each emotion right after "the emotion is":</div>
  <div id="bars"></div>
</div>
<script>
(function () {
  var MAX_BYTES = __MAX_UPLOAD_BYTES__, EMOTIONS = __EMOTIONS__;
  var drop = document.getElementById('drop'), input = document.getElementById('file');
  var statusEl = document.getElementById('status'), errorEl = document.getElementById('error');
  var preview = document.getElementById('preview'), result = document.getElementById('result');
  var overlay = document.getElementById('overlay'), choice = document.getElementById('emotion-choice');
  var SVG = overlay.namespaceURI;  // the inline <svg>'s namespace, for creating its children
  var lastFile = null;
  EMOTIONS.forEach(function (name) {
    var o = document.createElement('option'); o.value = name; o.textContent = name; choice.appendChild(o);
  });

  function showError(message) { errorEl.textContent = message; statusEl.textContent = ''; }

  // An <svg> has no .hidden property (it is not an HTMLElement): the attribute is set instead.
  function showOverlay(on) { if (on) { overlay.removeAttribute('hidden'); } else { overlay.setAttribute('hidden', ''); } }

  function el(name, attrs) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  // One word's GxG attention map as red squares over the picture, opacity relative to its peak.
  function showAttention(map) {
    overlay.textContent = '';
    var g = map.length, peak = Math.max.apply(null, map.map(function (r) { return Math.max.apply(null, r); }));
    overlay.setAttribute('viewBox', '0 0 ' + g + ' ' + g);
    map.forEach(function (row, y) {
      row.forEach(function (w, x) {
        overlay.appendChild(el('rect', { x: x, y: y, width: 1, height: 1, fill: '#d62728',
                                         'fill-opacity': (0.75 * w / (peak || 1)).toFixed(3) }));
      });
    });
    showOverlay(true);
  }

  function showWords(r) {
    var box = document.getElementById('words');
    box.textContent = ''; showOverlay(false);
    r.words.forEach(function (word, k) {
      var span = document.createElement('span'); span.className = 'word'; span.textContent = word;
      span.tabIndex = 0; span.setAttribute('role', 'button');
      span.addEventListener('click', function () {
        var on = !span.classList.contains('on');
        Array.prototype.forEach.call(box.children, function (s) { s.classList.remove('on'); });
        if (on) { span.classList.add('on'); showAttention(r.attention[k]); } else { showOverlay(false); }
      });
      box.appendChild(span);
    });
  }

  // Valence, arousal and dominance per token as three lines.
  function showVad(r) {
    var svg = document.getElementById('vad-chart'), w = 420, h = 130, left = 34, top = 8, bottom = 22;
    svg.textContent = '';
    if (!r.vad.length) { return; }
    var all = [].concat.apply([0], r.vad), lo = Math.min.apply(null, all), hi = Math.max.apply(null, all);
    if (hi - lo < 1e-6) { hi = lo + 1; }
    var n = r.vad.length, right = w - 90;
    var sx = function (i) { return left + (n > 1 ? i * (right - left) / (n - 1) : (right - left) / 2); };
    var sy = function (v) { return top + (hi - v) * (h - top - bottom) / (hi - lo); };
    svg.appendChild(el('line', { x1: left, y1: sy(lo), x2: left, y2: sy(hi), stroke: '#999' }));
    [lo, hi].forEach(function (v) {
      var t = el('text', { x: left - 4, y: sy(v) + 3, 'text-anchor': 'end' }); t.textContent = v.toFixed(2); svg.appendChild(t);
    });
    ['valence', 'arousal', 'dominance'].forEach(function (name, d) {
      var color = ['#1f77b4', '#d62728', '#2ca02c'][d];
      var points = r.vad.map(function (v, i) { return sx(i).toFixed(1) + ',' + sy(v[d]).toFixed(1); });
      svg.appendChild(el('polyline', { points: points.join(' '), fill: 'none', stroke: color, 'stroke-width': 2,
                                       'class': 'vad-' + name }));
      var t = el('text', { x: right + 8, y: top + 12 + 14 * d, fill: color }); t.textContent = name; svg.appendChild(t);
    });
    var t = el('text', { x: left, y: h - 6 }); t.textContent = n + ' tokens: ' + r.tokens.join('|').slice(0, 60); svg.appendChild(t);
  }

  function showResult(r) {
    document.getElementById('emotion').textContent = r.emotion || '(no emotion named)';
    document.getElementById('explanation').textContent =
        r.explanation ? 'because ' + r.explanation : '(no explanation)';
    showWords(r); showVad(r);
    var bars = document.getElementById('bars');
    bars.textContent = '';
    r.emotions.map(function (name, i) { return [name, r.probabilities[i]]; })
      .sort(function (a, b) { return b[1] - a[1]; })
      .forEach(function (pair) {
        var row = document.createElement('div'); row.className = 'row';
        var name = document.createElement('span'); name.className = 'name'; name.textContent = pair[0];
        var track = document.createElement('span'); track.className = 'track';
        var fill = document.createElement('div'); fill.className = 'fill';
        fill.style.width = (100 * pair[1]).toFixed(1) + '%';
        var p = document.createElement('span'); p.className = 'p'; p.textContent = (100 * pair[1]).toFixed(1) + '%';
        track.appendChild(fill); row.appendChild(name); row.appendChild(track); row.appendChild(p);
        bars.appendChild(row);
      });
    result.hidden = false;
  }

  function send(file) {
    errorEl.textContent = ''; result.hidden = true; showOverlay(false);
    if (!file) { return; }
    lastFile = file;
    if (file.size > MAX_BYTES) {
      showError('This file is ' + (file.size / 1048576).toFixed(1) + ' MB; the limit is ' +
                (MAX_BYTES / 1048576).toFixed(0) + ' MB.');
      return;
    }
    if (preview.src) { URL.revokeObjectURL(preview.src); }
    preview.src = URL.createObjectURL(file); preview.hidden = false;
    statusEl.textContent = 'Looking at ' + file.name + '...';
    var url = '/api/predict' + (choice.value ? '?emotion=' + encodeURIComponent(choice.value) : '');
    fetch(url, { method: 'POST', body: file,
                            headers: { 'Content-Type': file.type || 'application/octet-stream' } })
      .then(function (resp) {
        return resp.json().then(function (data) { return { ok: resp.ok, data: data }; });
      })
      .then(function (r) {
        if (!r.ok) { showError(r.data.error || 'The server refused the image.'); return; }
        statusEl.textContent = ''; showResult(r.data);
      })
      .catch(function (e) { showError('No answer from the server: ' + e); });
  }

  input.addEventListener('change', function () { send(input.files[0]); });
  choice.addEventListener('change', function () { if (lastFile) { send(lastFile); } });
  drop.addEventListener('dragover', function (e) { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', function () { drop.classList.remove('over'); });
  drop.addEventListener('drop', function (e) {
    e.preventDefault(); drop.classList.remove('over');
    send(e.dataTransfer.files[0]);
  });
})();
</script>
</body></html>
"""
