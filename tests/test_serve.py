"""The local demo server and the Predictor's emotion distribution, on the shared tiny run.

The server runs in a thread of this process on a free loopback port; requests are bounded and go
to 127.0.0.1 only.
"""

import collections
import http.client
import io
import json
import logging
import signal
import socket
import subprocess
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image

from sevlm_jax.inference import decode as decode_lib
from sevlm_jax.inference import predictor as inference
from sevlm_jax.inference import serve
from sevlm_jax import vocab
from sevlm_jax.data import records
from helpers import REPO, compile_cache, demo_root, main_command, subprocess_env


@pytest.fixture(scope="module")
def predictor(tiny_run):
  return inference.Predictor.from_workdir(str(tiny_run))


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
  test = records.load_split(demo_root(tmp_path_factory) / "ready", "test")
  return [test[i]["image"] for i in range(len(test))]


@pytest.fixture(scope="module")
def server(predictor):
  """The demo server on a free port of 127.0.0.1, serving from a thread; shut down at the end."""
  srv = serve.make_server(predictor, port=0)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield srv
  srv.shutdown()
  srv.server_close()
  thread.join(timeout=10)
  assert not thread.is_alive()


def request(srv, method, path, body=None, headers=None):
  """(status, decoded JSON or text) of one request to the test server."""
  conn = http.client.HTTPConnection(*srv.server_address, timeout=60)
  try:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    if resp.getheader("Content-Type", "").startswith("application/json"):
      return resp.status, json.loads(data)
    return resp.status, data.decode("utf-8")
  finally:
    conn.close()


def png_bytes(pixels, fmt="PNG"):
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format=fmt)
  return buf.getvalue()


def assert_still_answers(srv):
  status, health = request(srv, "GET", "/api/health")
  assert status == 200 and health["status"] == "ok"


# ----------------------------------------------------------------------------- emotion distribution


def test_emotion_words_have_distinct_first_tokens(predictor):
  first = inference.emotion_first_tokens(predictor.tokenizer)
  assert len(set(first.tolist())) == vocab.NUM_EMOTIONS
  for token, name in zip(first, vocab.EMOTIONS):
    piece = predictor.tokenizer.token_text(int(token))
    assert len(piece) > 3 and (" " + name).startswith(piece), (name, piece)


def test_emotion_distribution_is_a_distribution_per_image(predictor, test_images):
  assert len(test_images) > predictor.batch_size  # a full batch and a padded one
  probs = predictor.emotion_distribution(test_images)
  assert probs.shape == (len(test_images), vocab.NUM_EMOTIONS) and probs.dtype == np.float32
  assert np.all(probs >= 0) and np.all(probs <= 1)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
  # Each image's row is its own: the same alone and in another order.
  np.testing.assert_allclose(predictor.emotion_distribution([test_images[3]])[0], probs[3], atol=1e-6)
  np.testing.assert_allclose(predictor.emotion_distribution(test_images[::-1])[::-1], probs, atol=1e-6)
  assert predictor.emotion_distribution([]).shape == (0, vocab.NUM_EMOTIONS)


def test_distribution_is_generations_first_step_renormalised(predictor, test_images, tiny_run,
                                                             make_random_params):
  """Equal to the KV-cached decoder's first-step softmax over the emotion words' first tokens."""
  output_ids = np.load(tiny_run / "output_vocab.npy")
  varied = inference.Predictor(predictor.config,  # large random weights: distributions differ
                               make_random_params(predictor.model.config, seed=3, std=0.3),
                               np.load(tiny_run / "vad_table.npy"), output_ids=output_ids)
  probs = varied.emotion_distribution(test_images)
  tok = varied.tokenizer
  tokens, _, logits = decode_lib.generate(
      varied.model, varied.params, varied.preprocess(test_images), varied.vad_table, tok.prompt_ids,
      max_new_tokens=1, because_id=tok.because_id, eos_id=vocab.EOS_ID, pad_id=vocab.PAD_ID,
      return_logits=True, output_ids=output_ids)
  first = inference.emotion_first_tokens(tok)
  columns = [output_ids.tolist().index(t) for t in first]  # the demo's sentences name all nine
  expected = jax.nn.softmax(np.asarray(logits)[:, 0, columns], axis=-1)
  np.testing.assert_allclose(probs, expected, atol=1e-5)
  assert np.ptp(probs, axis=0).max() > 0.05  # images get different distributions
  # Where greedy decoding starts with an emotion word, that emotion is the most likely one.
  for t, p in zip(np.asarray(tokens)[:, 0], probs):
    if t in first:
      assert list(first).index(t) == int(np.argmax(p))


# ----------------------------------------------------------------------------- the server


def test_server_listens_on_loopback_only(server):
  assert server.server_address[0] == "127.0.0.1"


def test_page_is_served_self_contained(server):
  status, page = request(server, "GET", "/")
  assert status == 200 and "<title>" in page and 'id="drop"' in page and "/api/predict" in page
  assert "http://" not in page and "https://" not in page and "<script src" not in page
  assert str(serve.MAX_UPLOAD_BYTES) in page
  status, health = request(server, "GET", "/api/health")
  assert status == 200 and health == {"status": "ok", "emotions": list(vocab.EMOTIONS),
                                      "max_upload_bytes": serve.MAX_UPLOAD_BYTES}


def test_posted_image_gets_a_prediction(server, predictor, test_images):
  image = test_images[5]
  status, answer = request(server, "POST", "/api/predict", body=png_bytes(image),
                           headers={"Content-Type": "image/png"})
  assert status == 200, answer
  assert answer["emotions"] == list(vocab.EMOTIONS)
  probs = np.asarray(answer["probabilities"])
  assert probs.shape == (9,) and np.all(probs >= 0) and abs(probs.sum() - 1) < 1e-5
  assert isinstance(answer["emotion"], str) and isinstance(answer["explanation"], str)
  assert answer["text"].startswith("the emotion is")
  # The same as the Python API on the same picture.
  expected = predictor.predict([image])[0]
  assert {k: answer[k] for k in expected} == expected
  # From the generation's first step, equal to a separate pass.
  np.testing.assert_allclose(probs, predictor.emotion_distribution([image])[0], atol=1e-5)
  grid = predictor.config.data.image_size // predictor.model.config.vision.patch_size
  attention = np.asarray(answer["attention"])
  assert attention.shape == (len(answer["words"]), grid, grid)
  np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-3)
  assert np.asarray(answer["vad"]).shape == (len(answer["tokens"]), 3)
  # Another format of another size works too.
  big = np.asarray(Image.fromarray(image).resize((80, 60)))
  status, answer = request(server, "POST", "/api/predict", body=png_bytes(big, "JPEG"))
  assert status == 200 and len(answer["probabilities"]) == 9


def test_a_chosen_emotion_is_explained(server, test_images):
  body = png_bytes(test_images[2])
  status, answer = request(server, "POST", "/api/predict?emotion=something%20else", body=body)
  assert status == 200, answer
  assert answer["text"].startswith("the emotion is something else because")
  status, answer = request(server, "POST", "/api/predict?emotion=joy", body=body)
  assert status == 400 and "'joy' is not one of the nine ArtEmis emotions" in answer["error"]
  assert_still_answers(server)


def test_garbage_gets_a_clear_400(server):
  status, answer = request(server, "POST", "/api/predict", body=b"this is not a picture\x00\x01",
                           headers={"Content-Type": "image/png"})
  assert status == 400 and "not an image" in answer["error"]
  truncated = png_bytes(np.zeros((40, 40, 3), np.uint8))[:60]
  status, answer = request(server, "POST", "/api/predict", body=truncated)
  assert status == 400 and answer["error"]
  status, answer = request(server, "POST", "/api/predict", body=b"")
  assert status == 400 and "empty upload" in answer["error"]
  assert_still_answers(server)


def test_oversize_upload_is_refused_unread_with_413(server):
  """Only the headers are sent: the server must answer from Content-Length alone."""
  conn = http.client.HTTPConnection(*server.server_address, timeout=30)
  try:
    conn.putrequest("POST", "/api/predict")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", str(serve.MAX_UPLOAD_BYTES + 1))
    conn.endheaders()
    resp = conn.getresponse()
    answer = json.loads(resp.read())
  finally:
    conn.close()
  assert resp.status == 413 and "too large" in answer["error"]
  assert f"{serve.MAX_UPLOAD_BYTES:,}" in answer["error"]
  assert_still_answers(server)


def test_missing_length_and_unknown_paths(server):
  conn = http.client.HTTPConnection(*server.server_address, timeout=30)
  try:
    conn.putrequest("POST", "/api/predict")
    conn.endheaders()
    resp = conn.getresponse()
    answer = json.loads(resp.read())
  finally:
    conn.close()
  assert resp.status == 411 and "Content-Length" in answer["error"]
  assert request(server, "GET", "/nothing")[0] == 404
  status, answer = request(server, "POST", "/predict", body=b"x")
  assert status == 404 and "/api/predict" in answer["error"]
  assert_still_answers(server)


def test_huge_picture_is_refused_before_decoding():
  with pytest.raises(serve.RequestError, match="too large: 40 x 40 pixels") as e:
    serve.decode_upload(png_bytes(np.zeros((40, 40, 3), np.uint8)), max_pixels=1000)
  assert e.value.status == 413
  image = serve.decode_upload(png_bytes(np.zeros((40, 30, 3), np.uint8)))
  assert image.mode == "RGB" and image.size == (30, 40)


def test_serve_command_answers_then_stops_on_ctrl_c(tiny_run, tmp_path_factory, tmp_path):
  """python -m sevlm_jax.main --mode=serve: up on 127.0.0.1:--port, and a clean exit on SIGINT."""
  with socket.socket() as s:  # a free port (the tiny race before the server binds it is harmless)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  args = ["--mode=serve", f"--workdir={tiny_run}", f"--port={port}"]
  with open(tmp_path / "stderr", "w") as err:
    proc = subprocess.Popen(main_command(args), cwd=REPO, env=subprocess_env(compile_cache(tmp_path_factory)),
                            stdout=subprocess.PIPE, stderr=err, text=True)
  try:
    deadline, status = time.time() + 180, None
    while status is None and proc.poll() is None and time.time() < deadline:
      try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/health")
        status = conn.getresponse().status
        conn.close()
      except OSError:
        time.sleep(0.2)
    assert status == 200, (tmp_path / "stderr").read_text()[-3000:]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == 0, (tmp_path / "stderr").read_text()[-3000:]
  assert f"http://127.0.0.1:{port}/" in out


# ----------------------------------------------------------------------------- abuse


def test_decompression_bomb_gets_413_naming_the_pixel_limit(server):
  """A 20000 x 20000 PNG is a small file; PIL's own bomb guard must not turn it into a 400."""
  buf = io.BytesIO()
  Image.new("1", (20000, 20000)).save(buf, format="PNG")  # 400 megapixels in a small file
  bomb = buf.getvalue()
  assert len(bomb) < serve.MAX_UPLOAD_BYTES
  status, answer = request(server, "POST", "/api/predict", body=bomb)
  assert status == 413 and "too large" in answer["error"]
  assert f"{serve.MAX_PIXELS:,} pixels" in answer["error"]
  assert_still_answers(server)


def test_a_refused_body_that_is_sent_still_gets_the_whole_answer(server):
  """http.client sends the whole body before it reads: the server must read it, not reset."""
  body = b"\0" * (serve.MAX_UPLOAD_BYTES + 100_000)
  status, answer = request(server, "POST", "/api/predict", body=body)  # no BrokenPipeError
  assert status == 413 and f"{serve.MAX_UPLOAD_BYTES:,}" in answer["error"]
  status, answer = request(server, "POST", "/elsewhere", body=b"x" * 300_000)
  assert status == 404 and "/api/predict" in answer["error"]
  assert_still_answers(server)


def test_each_refusal_is_one_log_line_with_its_reason(server, caplog):
  caplog.set_level(logging.INFO)
  request(server, "POST", "/api/predict", body=b"not an image")
  time.sleep(0.2)  # the handler thread logs after answering
  lines = [r.getMessage() for r in caplog.records if "/api/predict" in r.getMessage()]
  assert len(lines) == 1, lines
  assert "refused with 400" in lines[0] and "not an image" in lines[0]


def test_a_stalled_client_is_dropped_after_the_socket_timeout(predictor):
  srv = serve.make_server(predictor, port=0, socket_timeout_s=0.5)
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  try:
    with socket.create_connection(srv.server_address, timeout=10) as sock:
      sock.sendall(b"POST /api/predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\nabc")  # then nothing
      started = time.monotonic()
      data = sock.recv(65536)  # the server gives up on the body and answers, or just closes
      assert time.monotonic() - started < 5
      assert data == b"" or b" 400 " in data.split(b"\r\n")[0]
    assert_still_answers(srv)
  finally:
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


# ----------------------------------------------------------------------------- crowds and strangers


def post_all_at_once(srv, clients, body):
  """The status of each of `clients` uploads sent at the same moment (one thread each, released
  together), or the name of the error its connection met."""
  release = threading.Barrier(clients)
  outcomes = [None] * clients

  def client(i):
    release.wait()
    try:
      outcomes[i] = request(srv, "POST", "/api/predict", body=body,
                            headers={"Content-Type": "image/png"})[0]
    except OSError as e:  # a reset or refused connection
      outcomes[i] = e.__class__.__name__

  threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=300)
  return outcomes


@pytest.mark.parametrize("clients", [16, 32])
def test_simultaneous_uploads_are_all_answered(server, test_images, clients):
  """A listen backlog of 5 (socketserver's default) overflows here, and connections are reset."""
  assert server.request_queue_size >= 128
  body = png_bytes(test_images[0])
  for _ in range(3):  # with a backlog of 5, most rounds of 16 and every round of 32 met resets
    outcomes = post_all_at_once(server, clients, body)
    assert outcomes == [200] * clients, collections.Counter(outcomes)
  assert_still_answers(server)


def test_only_raster_formats_reach_pillow(monkeypatch):
  """EPS goes to Ghostscript, SVG, PDF and the rest to decoders the page does not need: refused
  by their first bytes, before Pillow opens anything."""
  def no_open(*args, **kwargs):
    raise AssertionError("Pillow was asked to open a refused upload")
  monkeypatch.setattr(Image, "open", no_open)
  uploads = {
      "picture.eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "PostScript"),
      "binary.eps": (b"\xc5\xd0\xd3\xc6" + bytes(40), "PostScript"),
      "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
      "paper.pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
      "archive.zip": (b"PK\x03\x04" + bytes(40), "ZIP"),
      "picture.ppm": (b"P6\n2 2\n255\n" + bytes(12), "not a JPEG, PNG, WebP, GIF, BMP or TIFF"),
  }
  for name, (body, says) in uploads.items():
    with pytest.raises(serve.RequestError) as e:
      serve.decode_upload(body, name=name)
    assert e.value.status == 400 and says in str(e.value) and repr(name) in str(e.value), str(e.value)
    assert str(e.value).startswith("not an image that can be read")


def test_each_raster_format_is_read(monkeypatch):
  opened = []
  real_open = Image.open
  monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(k.get("formats")) or real_open(*a, **k))
  pixels = np.arange(40 * 30 * 3, dtype=np.uint8).reshape(40, 30, 3)
  for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
    opened.clear()
    image = serve.decode_upload(png_bytes(pixels, fmt))
    assert image.mode == "RGB" and image.size == (30, 40), fmt
    assert opened[0] == serve.UPLOAD_FORMATS  # Pillow itself may use only these decoders


def test_errors_name_the_upload_not_a_python_object(server):
  damaged = {b"this is not a picture": "is not a JPEG",
             b"\x89PNG\r\n\x1a\n" + b"junk" * 10: "PNG",
             b"GIF89a" + b"x" * 20: "GIF",
             png_bytes(np.zeros((40, 40, 3), np.uint8))[:60]: "PNG"}
  for body, says in damaged.items():
    for headers, who in (({}, "the upload"),
                         ({"X-Upload-Name": "Nymph%C3%A9as%0A.png"}, "'Nymphéas\\n.png'")):
      status, answer = request(server, "POST", "/api/predict", body=body, headers=headers)
      message = answer["error"]
      assert status == 400 and who in message and says in message, message
      assert "object at 0x" not in message and "BytesIO" not in message, message
  assert_still_answers(server)


def test_a_page_elsewhere_gets_403(server, test_images):
  """A page open in the user's browser may post a text/plain body without a preflight."""
  port = server.server_address[1]
  body = png_bytes(test_images[0])
  for origin in ("http://evil.example", f"http://evil.example:{port}", "null",
                 f"http://127.0.0.1:{port + 1}", f"https://127.0.0.1:{port}"):
    status, answer = request(server, "POST", "/api/predict", body=body,
                             headers={"Content-Type": "text/plain", "Origin": origin})
    assert status == 403 and repr(origin) in answer["error"], (origin, answer)
    assert request(server, "GET", "/api/health", headers={"Origin": origin})[0] == 403
  for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):  # the page itself
    status, answer = request(server, "POST", "/api/predict", body=body, headers={"Origin": origin})
    assert status == 200, answer
  assert_still_answers(server)


def test_a_rebinding_host_gets_403(server, test_images):
  """DNS rebinding: a name the attacker controls, pointed at 127.0.0.1, carries its own Host."""
  port = server.server_address[1]
  for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1"):
    for method, path, body in (("GET", "/", None), ("GET", "/api/health", None),
                               ("POST", "/api/predict", png_bytes(test_images[0]))):
      status, answer = request(server, method, path, body=body, headers={"Host": host})
      assert status == 403 and repr(host) in answer["error"], (host, path, answer)
  for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}"):
    assert request(server, "GET", "/", headers={"Host": host})[0] == 200
  assert_still_answers(server)
