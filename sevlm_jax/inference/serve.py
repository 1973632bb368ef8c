"""A local web page for trying a trained run: drop an image, get the emotion and an explanation.

  python -m sevlm_jax.main --mode=serve --workdir=runs/demo [--port=8765]

Listens on 127.0.0.1 only (nothing else can reach it), and answers only its own page: a request
whose Host is not 127.0.0.1:PORT or localhost:PORT (a DNS-rebinding page) or whose Origin is another
site (a page in the user's browser may post a text/plain body without a preflight) gets 403.
Routes:

  GET  /              the page (sevlm_jax/inference/assets/, CSS and JS inline; no network)
  GET  /api/health    {"status": "ok", "emotions": [...], "max_upload_bytes": N}
  POST /api/predict   body: the image file's bytes (JPEG, PNG, WebP, GIF, BMP or TIFF, told by
                      their first bytes; the optional X-Upload-Name header, percent-encoded, names
                      it in error messages); ?emotion=NAME asks for the explanation of that
                      emotion. Answers {"emotion", "explanation",
                      "text", "emotions", "probabilities", "words", "attention", "tokens",
                      "vad"}: the generated sentence, the model's probabilities of the nine
                      emotions (first decoding step), per explanation word a GxG map of where
                      the model looked (rows sum to 1), per token its predicted VAD.

Bad requests get a JSON {"error": "..."}: 400 (not one of those formats, damaged, empty), 403 (a
foreign Host or Origin), 411 (no Content-Length),
413 (over the upload limit, judged from the Content-Length, or over the pixel limit, judged from
the image header before anything is decoded, decompression bombs included). A refused body is
read and dropped first (up to DISCARD_LIMIT), so the client gets the whole answer; each refusal
is logged as one line with its reason. A client stalling for SOCKET_TIMEOUT_S is dropped. The
server goes on answering. Requests are served by threads, with a listen backlog for a crowd of
simultaneous uploads; predictions run one at a time (the predictor keeps a random-number state and
one compiled batch shape).
"""

import http.server
import io
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
MAX_PIXELS = images_lib.MAX_PIXELS  # a larger picture is refused before it is decoded (as at ingestion)
SOCKET_TIMEOUT_S = 30  # seconds a client may stall while sending
DISCARD_LIMIT = 256 * 1024 * 1024  # an oversize body up to this size is read and dropped
LISTEN_BACKLOG = 128  # connections the kernel holds before the server accepts them

# The raster formats an upload may be (Pillow's names), told by the bytes their files start with.
# Anything else is refused before Pillow sees it: Pillow also opens EPS (through Ghostscript, where
# it is installed), PDF, PSD, ICO and more, decoders a page for pictures has no use for.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
FORMATS_IN_WORDS = "a JPEG, PNG, WebP, GIF, BMP or TIFF file"
MAGIC_BYTES = (("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG\r\n\x1a\n"), ("GIF", b"GIF87a"),
               ("GIF", b"GIF89a"), ("BMP", b"BM"), ("TIFF", b"II*\0"), ("TIFF", b"MM\0*"),
               ("TIFF", b"II+\0"), ("TIFF", b"MM\0+"))  # the last two: BigTIFF
# Files that are often mistaken for pictures, named in the refusal.
OTHER_MAGIC_BYTES = ((b"%!PS", "PostScript (EPS)"), (b"\xc5\xd0\xd3\xc6", "PostScript (EPS)"),
                     (b"%PDF", "PDF"), (b"PK\x03\x04", "ZIP"), (b"<", "SVG, HTML or XML"))


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


def upload_format(body: bytes) -> str | None:
  """The name in UPLOAD_FORMATS of the format whose magic bytes start `body`, or None."""
  if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
    return "WEBP"
  return next((fmt for fmt, magic in MAGIC_BYTES if body.startswith(magic)), None)


def not_a_picture(body: bytes, who: str) -> str:
  """The refusal of an upload that is none of UPLOAD_FORMATS, naming what it is where known."""
  kind = next((kind for magic, kind in OTHER_MAGIC_BYTES
               if body[:64].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(magic)), None)
  if kind:
    return f"not an image that can be read: {who} is a {kind} file; upload {FORMATS_IN_WORDS}"
  return f"not an image that can be read: {who} is not {FORMATS_IN_WORDS}"


def decode_upload(body: bytes, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
  """An RGB PIL image of the uploaded bytes, or RequestError saying why not; name: the upload's
  file name, for the messages."""
  who = repr(name) if name else "the upload"
  if not body:
    raise RequestError(400, "empty upload: send the image file's bytes as the request body")
  fmt = upload_format(body)
  if fmt is None:
    raise RequestError(400, not_a_picture(body, who))
  try:
    # Pillow's own guard of the same formats: only their decoders may read the header.
    Image.open(io.BytesIO(body), formats=UPLOAD_FORMATS).close()
    return images_lib.open_image(body, max_pixels)
  except images_lib.ImageTooLarge as e:
    raise RequestError(413, f"{who}: {e}") from e
  except Image.DecompressionBombError as e:  # PIL's own guard, far above max_pixels
    raise RequestError(413, f"{who}: image too large (limit {max_pixels:,} pixels): {e}") from e
  except Image.UnidentifiedImageError as e:  # its message holds a Python object, not the upload
    raise RequestError(400, f"not an image that can be read: {who} starts as a {fmt} file but "
                       "its header is damaged") from e
  except Exception as e:  # PIL raises several types for truncated and damaged data
    raise RequestError(400, f"not an image that can be read: {who} is a damaged {fmt} file "
                       f"({e.__class__.__name__}: {e})") from e


def prediction_json(predictor, image: Image.Image, emotion: str | None = None) -> dict[str, Any]:
  """The answer to /api/predict for one image: one traced decoding pass gives the sentence, the
  emotion probabilities (its first step), each explanation word's attention map (GxG, rounded)
  and each explanation token's VAD prediction. emotion: explain this one instead of the model's
  choice."""
  pred = predictor.analyse([image], emotion)[0]
  return {**pred, "emotions": list(vocab.EMOTIONS),
          "attention": np.round(pred["attention"], 5).tolist(),
          "vad": np.round(pred["vad"], 5).tolist()}


def page_hosts(port: int) -> tuple[str, ...]:
  """The Host headers that name this server (a browser leaves out the port only when it is 80)."""
  hosts = (f"{HOST}:{port}", f"localhost:{port}")
  return hosts + (HOST, "localhost") if port == 80 else hosts


def stranger_refusal(hosts: list[str], origins: list[str], port: int) -> str | None:
  """Why a request with these Host and Origin headers is refused with 403, or None.

  A Host other than this server's is a page whose name was pointed at 127.0.0.1 (DNS rebinding);
  an Origin other than this server's is a page elsewhere posting to it (a text/plain POST needs
  no CORS preflight). A request without either is not from a browser's page and is served."""
  ours = page_hosts(port)
  for host in hosts:
    if host.strip().lower() not in ours:
      return (f"forbidden: Host {host[:200]!r} is not this server; open "
              f"http://{HOST}:{port}/ or http://localhost:{port}/")
  for origin in origins:
    if origin.strip().lower() not in [f"http://{h}" for h in ours]:
      return (f"forbidden: a page from {origin[:200]!r} may not use this server; only its own "
              f"page (http://{HOST}:{port}/) may")
  return None


def upload_name(header: str | None) -> str | None:
  """The file name of X-Upload-Name (percent-encoded UTF-8), at most 200 characters."""
  if not header:
    return None
  return urllib.parse.unquote(header.strip())[:200] or None


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

  def _refuse_strangers(self, unread: int = 0) -> bool:
    """Refuses (403) a request from a foreign Host or Origin; True if it did."""
    refusal = stranger_refusal(self.headers.get_all("Host", []), self.headers.get_all("Origin", []),
                               self.server.server_address[1])
    if refusal:
      self._refuse(403, refusal, unread)
    return refusal is not None

  def do_GET(self):  # pylint: disable=invalid-name
    if self._refuse_strangers():
      return
    if self.path in ("/", "/index.html"):
      self._send(200, self.page, "text/html; charset=utf-8")
    elif self.path == "/api/health":
      self._json(200, {"status": "ok", "emotions": list(vocab.EMOTIONS),
                       "max_upload_bytes": self.max_upload_bytes})
    else:
      self._json(404, {"error": f"no such page: {self.path}"})

  def do_POST(self):  # pylint: disable=invalid-name
    if self._refuse_strangers(unread=self._declared_length()):
      return
    if urllib.parse.urlsplit(self.path).path != "/api/predict":
      self._refuse(404, f"no such endpoint: {self.path} (POST images to /api/predict)",
                   unread=self._declared_length())
      return
    try:
      body = self._read_body()
      image = decode_upload(body, name=upload_name(self.headers.get("X-Upload-Name")))
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


class PageServer(http.server.ThreadingHTTPServer):
  """A thread per request, and a listen backlog for a crowd: with socketserver's 5, a dozen
  uploads arriving at once overflow it and the kernel resets or delays connections."""
  request_queue_size = LISTEN_BACKLOG
  daemon_threads = True


def make_server(predictor, port: int = DEFAULT_PORT, max_upload_bytes: int = MAX_UPLOAD_BYTES,
                socket_timeout_s: float = SOCKET_TIMEOUT_S) -> PageServer:
  """A server on 127.0.0.1:port (0: a free port; see server.server_address) not yet serving."""
  return PageServer((HOST, port), make_handler(predictor, max_upload_bytes, socket_timeout_s))


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

