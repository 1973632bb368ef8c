"""A stand-in for the Hugging Face hub on 127.0.0.1: just enough of its HTTP API for huggingface_hub's
create_repo, upload_folder and snapshot_download, with what arrives kept for the tests to check.

  hub = StandInHub(tokens={"hf_test"}, lfs_suffixes=(".safetensors", ".npy"))
  os.environ["HF_ENDPOINT"] = hub.url          # before huggingface_hub is imported, or pass endpoint=
  ...
  hub.files("me/model")                        # {path: bytes} at the repository's head
  hub.requests                                 # [(method, path, Authorization header or None)]

Uploads: POST /api/repos/create; POST /api/validate-yaml (the card's front matter, parsed as
huggingface_hub parses it); POST /api/models/R/preupload/REV, which says which files go through
LFS (the suffixes given; without them every file is "regular", as a client with hf_xet needs,
there being no Xet storage here to talk to); the LFS batch API (basic transfer) and a PUT of each
object, checked against its sha256; POST /api/models/R/commit/REV, the NDJSON commit. Downloads:
GET /api/models/R/revision/REV, GET /api/models/R/tree/REV, HEAD and GET /R/resolve/REV/PATH, with
the headers huggingface_hub reads (X-Repo-Commit, ETag or X-Linked-Etag, Content-Length). The hub's
own rules kept here: a new repository holds .gitattributes, the API needs a known token (reading a
public repository does not), a private repository is read with a token only, an unchanged file is
not committed again.
"""

import base64
import hashlib
import http.server
import json
import re
import threading
import urllib.parse

import huggingface_hub

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.npy filter=lfs diff=lfs merge=lfs -text\n"
REPO = r"(?P<repo>[\w.\-]+/[\w.\-]+)"
ROUTES = [  # (method, pattern, handler name); the first match serves the request
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ("GET", rf"/api/models/{REPO}/revision/(?P<rev>[^/]+)", "repo_info"),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?", "tree"),
    ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


def git_blob_id(data: bytes) -> str:
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Error(Exception):
  def __init__(self, status: int, message: str, code: str | None = None, **extra):
    super().__init__(message)
    self.status, self.message, self.code, self.extra = status, message, code, extra


class StandInHub:
  """The stand-in's state (repositories, LFS objects, requests) and its server thread."""

  def __init__(self, tokens=(), lfs_suffixes=()):
    self.tokens = set(tokens)
    self.lfs_suffixes = tuple(lfs_suffixes)
    self.repos = {}  # repo id -> {"private": bool, "commits": [(sha, {path: bytes})]}
    self.lfs_objects = {}  # sha256 -> bytes
    self.requests = []  # (method, path, Authorization header or None)
    self.validated = []  # the front matter of every README.md the client had checked
    self.lock = threading.Lock()
    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
    self.thread.start()

  def close(self):
    self.server.shutdown()
    self.server.server_close()

  def files(self, repo: str, rev: str = "main") -> dict[str, bytes]:
    return dict(self._commit(repo, rev)[1])

  # --- the API ---------------------------------------------------------------------------------

  def create_repo(self, request, body, _):
    self._authorize(request)
    payload = json.loads(body)
    repo = f"{payload['organization']}/{payload['name']}"
    if repo in self.repos:  # the hub's answer names the repository (create_repo reads it)
      raise _Error(409, "You already created this model repo", url=f"{self.url}/{repo}")
    first = {".gitattributes": GITATTRIBUTES}
    self.repos[repo] = {"private": payload.get("visibility") == "private",
                        "commits": [(self._sha(None, first), first)]}
    return 200, {"url": f"{self.url}/{repo}"}, {}

  def validate_yaml(self, request, body, _):
    """The card's front matter must parse as a model card's metadata (the hub checks more)."""
    content = json.loads(body)["content"]
    if not content.startswith("---\n"):
      return 200, {"warnings": [{"message": "empty or missing yaml metadata in repo card"}]}, {}
    try:
      metadata = huggingface_hub.ModelCard(content).data.to_dict()
    except ValueError as e:
      return 400, {"errors": [{"message": str(e)}]}, {}
    self.validated.append(metadata)
    return 200, {"warnings": []}, {}

  def preupload(self, request, body, match):
    """How each file goes up, and the id of what the repository holds at its path (so that an
    unchanged file is not committed again)."""
    self._repo(match["repo"], request, write=True)
    _, held = self._commit(match["repo"], match["rev"])
    return 200, {"files": [{"path": f["path"], "uploadMode": self._mode(f["path"]), "shouldIgnore": False,
                            "oid": self._oid(f["path"], held[f["path"]]) if f["path"] in held else None}
                           for f in json.loads(body)["files"]]}, {}

  def lfs_batch(self, request, body, match):
    self._repo(match["repo"], request, write=True)
    objects = []
    for obj in json.loads(body)["objects"]:
      entry = {"oid": obj["oid"], "size": obj["size"]}
      if obj["oid"] not in self.lfs_objects:  # stored objects need no upload
        entry["actions"] = {"upload": {"href": f"{self.url}/lfs-objects/{obj['oid']}"}}
      objects.append(entry)
    return 200, {"transfer": "basic", "objects": objects}, {}

  def lfs_put(self, request, body, match):  # a pre-signed URL: no token, as on the hub's storage
    if hashlib.sha256(body).hexdigest() != match["oid"]:
      raise _Error(400, "content does not match its sha256")
    self.lfs_objects[match["oid"]] = body
    return 200, {}, {}

  def commit(self, request, body, match):
    repo = self._repo(match["repo"], request, write=True)
    parent_sha, files = self._commit(match["repo"], match["rev"])
    files = dict(files)
    for line in body.splitlines():
      item = json.loads(line)
      value = item["value"]
      if item["key"] == "file":
        files[value["path"]] = base64.b64decode(value["content"])
      elif item["key"] == "lfsFile":
        if value["oid"] not in self.lfs_objects:
          raise _Error(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
        files[value["path"]] = self.lfs_objects[value["oid"]]
      elif item["key"] == "deletedFile":
        files.pop(value["path"], None)
      elif item["key"] != "header":
        raise _Error(400, f"unsupported commit operation {item['key']}")
    sha = self._sha(parent_sha, files)
    repo["commits"].append((sha, files))
    return 200, {"success": True, "commitOid": sha,
                 "commitUrl": f"{self.url}/{match['repo']}/commit/{sha}"}, {}

  def repo_info(self, request, body, match):
    repo = self._repo(match["repo"], request)
    sha, files = self._commit(match["repo"], match["rev"])
    return 200, {"id": match["repo"], "sha": sha, "private": repo["private"],
                 "siblings": [{"rfilename": path} for path in sorted(files)]}, {}

  def tree(self, request, body, match):
    self._repo(match["repo"], request)
    _, files = self._commit(match["repo"], match["rev"])
    entries = []
    for path, data in sorted(files.items()):
      entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
      if self._mode(path) == "lfs":
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
      entries.append(entry)
    return 200, entries, {}

  def resolve(self, request, body, match):
    self._repo(match["repo"], request)
    sha, files = self._commit(match["repo"], match["rev"])
    path = urllib.parse.unquote(match["path"])
    if path not in files:
      raise _Error(404, "Entry not found", "EntryNotFound")
    data = files[path]
    headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_id(data)}"'}
    if self._mode(path) == "lfs":
      headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
    return 200, data, headers

  # --- state ---------------------------------------------------------------------------------

  def _mode(self, path: str) -> str:
    return "lfs" if path.endswith(self.lfs_suffixes) else "regular"

  def _oid(self, path: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if self._mode(path) == "lfs" else git_blob_id(data)

  def _authorize(self, request) -> None:
    if (request.headers.get("Authorization") or "").removeprefix("Bearer ") not in self.tokens:
      raise _Error(401, "Invalid credentials in Authorization header")

  def _repo(self, repo_id: str, request, write: bool = False) -> dict:
    repo = self.repos.get(repo_id)
    if write or (repo and repo["private"]):
      self._authorize(request)
    if repo is None:
      raise _Error(404, "Repository not found", "RepoNotFound")
    return repo

  def _commit(self, repo_id: str, rev: str):
    commits = self.repos[repo_id]["commits"]
    if rev == "main":
      return commits[-1]
    for sha, files in commits:
      if sha == rev:
        return sha, files
    raise _Error(404, f"Invalid rev id: {rev}", "RevisionNotFound")

  @staticmethod
  def _sha(parent: str | None, files: dict) -> str:
    digest = hashlib.sha1((parent or "").encode())
    for path in sorted(files):
      digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return digest.hexdigest()


def _handler(hub: StandInHub):
  class Handler(http.server.BaseHTTPRequestHandler):
    """One request: routed to the StandInHub method ROUTES names, its answer written back."""

    def do_GET(self):  # pylint: disable=invalid-name
      self._serve("GET")

    def do_HEAD(self):  # pylint: disable=invalid-name
      self._serve("HEAD")

    def do_POST(self):  # pylint: disable=invalid-name
      self._serve("POST")

    def do_PUT(self):  # pylint: disable=invalid-name
      self._serve("PUT")

    def log_message(self, *args):  # quiet
      pass

    def _serve(self, method: str):
      path = urllib.parse.urlsplit(self.path).path
      body = self._body()
      with hub.lock:
        hub.requests.append((method, path, self.headers.get("Authorization")))
        try:
          status, answer, headers = self._route(method, path, body)
        except _Error as e:
          status, answer = e.status, {"error": e.message, **e.extra}
          headers = {"X-Error-Message": e.message, **({"X-Error-Code": e.code} if e.code else {})}
      data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
      self.send_response(status)
      for key, value in {"Content-Type": "application/octet-stream" if isinstance(answer, bytes)
                         else "application/json", **headers}.items():
        self.send_header(key, value)
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      if method != "HEAD":
        self.wfile.write(data)

    def _route(self, method: str, path: str, body: bytes):
      for route_method, pattern, name in ROUTES:
        match = re.fullmatch(pattern, path)
        if route_method == method and match:
          return getattr(hub, name)(self, body, match)
      raise _Error(404, f"no stand-in route for {method} {path}")

    def _body(self) -> bytes:
      if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while (size := int(self.rfile.readline().strip(), 16)) > 0:
          chunks.append(self.rfile.read(size))
          self.rfile.readline()
        self.rfile.readline()
        return b"".join(chunks)
      return self.rfile.read(int(self.headers.get("Content-Length") or 0))

  return Handler
