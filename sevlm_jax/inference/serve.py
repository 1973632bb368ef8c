"""A local web page for trying a trained run: drop an image, get the emotion and an explanation.

  python -m sevlm_jax.main --mode=serve --workdir=runs/demo [--port=8765]

Listens on 127.0.0.1 only (nothing else can reach it). Routes:

  GET  /              the page (sevlm_jax/inference/assets/, CSS and JS inline; no network)
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
import string
import threading
import urllib.parse
from typing import Any

from absl import logging
import numpy as np
from PIL import Image

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.data import images as images_lib

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a larger picture is refused before it is decoded (decompression bombs)
SOCKET_TIMEOUT_S = 30  # seconds a client may stall while sending
DISCARD_LIMIT = 256 * 1024 * 1024  # an oversize body up to this size is read and dropped


# The page as one self-contained document: assets/page.html with page.css and page.js inlined.
# make_handler fills in the page's __MAX_UPLOAD_BYTES__ and __EMOTIONS__.
PAGE = string.Template(io_utils.package_text(__package__, "page.html")).substitute(
    style=io_utils.package_text(__package__, "page.css"),
    script=io_utils.package_text(__package__, "page.js"))


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


class Handler(http.server.BaseHTTPRequestHandler):
  """The page and /api/predict; make_handler binds it to a predictor (one request at a time)."""
  server_version = "sevlm"
  predictor: Any = None
  lock: threading.Lock
  page: bytes = b""
  max_upload_bytes: int = MAX_UPLOAD_BYTES

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
      self._send(200, self.page, "text/html; charset=utf-8")
    elif self.path == "/api/health":
      self._json(200, {"status": "ok", "emotions": list(vocab.EMOTIONS),
                       "max_upload_bytes": self.max_upload_bytes})
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
      with self.lock:
        answer = prediction_json(self.predictor, image, requested_emotion(self.path))
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
    if n > self.max_upload_bytes:  # answered from the header; the body is dropped afterwards
      raise RequestError(413, f"upload too large: {n:,} bytes (limit {self.max_upload_bytes:,})",
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


def make_handler(predictor, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S) -> type[Handler]:
  """A request handler class bound to one predictor."""
  page = PAGE.replace("__MAX_UPLOAD_BYTES__", str(max_upload_bytes)).replace(
      "__EMOTIONS__", json.dumps(list(vocab.EMOTIONS))).encode("utf-8")
  return type("BoundHandler", (Handler,), {
      "predictor": predictor, "lock": threading.Lock(), "page": page,
      "max_upload_bytes": max_upload_bytes,
      "timeout": socket_timeout_s})  # a stalled client frees its thread


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

