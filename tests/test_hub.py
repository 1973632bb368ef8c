"""The Hugging Face hub both ways, offline, against a stand-in for the hub on 127.0.0.1
(hub_standin.py): `--mode=export --push_to_hub` uploads the export it wrote (its files arrive with
their sha256; the token goes in the Authorization header and never into the output);
Predictor.from_pretrained("owner/name") loads it from huggingface_hub's cache with HF_HUB_OFFLINE=1
and predicts what the folder predicts; misses, refused tokens and no network are one clear error;
the card's front matter parses back with huggingface_hub."""

import hashlib
import json
import pathlib

import huggingface_hub
import pytest
from huggingface_hub import constants

from sevlm_jax import errors
from sevlm_jax.config import migrate
from sevlm_jax.data import records
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.inference import card_metadata
from sevlm_jax.inference import export as export_lib
from sevlm_jax.inference import hub
from sevlm_jax.inference import predictor as predictor_lib
from sevlm_jax.inference import publish
from helpers import compile_cache, demo_root, run_main
from hub_standin import StandInHub

TOKEN = "hf_standInSecret0123456789"  # never to be printed
REPO = "me/sevlm-tiny"


@pytest.fixture(scope="module")
def stand_in():
  server = StandInHub(tokens={TOKEN}, lfs_suffixes=(".safetensors", ".npy"))
  yield server
  server.close()


@pytest.fixture(scope="module")
def pushed(tiny_run, stand_in, tmp_path_factory):
  """`--mode=export --push_to_hub=me/sevlm-tiny --private` run in a subprocess with the hub's
  environment variables pointing at the stand-in (HF_ENDPOINT is read when huggingface_hub is
  imported); hf_xet is switched off there, so the binary files go up through plain LFS."""
  tmp = tmp_path_factory.mktemp("push")
  out = tmp / "model"
  with pytest.MonkeyPatch.context() as env:  # run_main passes os.environ on
    for key, value in {"HF_ENDPOINT": stand_in.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp / "hf_home"),
                       "HF_HUB_DISABLE_XET": "1"}.items():
      env.setenv(key, value)
    result = run_main(["--mode=export", f"--workdir={tiny_run}", f"--out={out}", f"--push_to_hub={REPO}",
                       "--private"], compile_cache(tmp_path_factory), tmp / "export")
  assert result.returncode == 0, result.stderr[-3000:]
  return result, out


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
  test = records.load_split(demo_root(tmp_path_factory) / "ready", "test")
  return [test[i]["image"] for i in range(4)]


def _sha256s(folder: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
  """In-process calls to a stand-in: huggingface_hub's constants as its environment variables
  would set them (a fresh cache, no stored login)."""
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
  monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_stored_token"))
  monkeypatch.delenv("HF_TOKEN", raising=False)

  def point_at(server_url: str) -> None:
    monkeypatch.setattr(constants, "ENDPOINT", server_url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server_url + "/{repo_id}/resolve/{revision}/{filename}")
  return point_at


# ----------------------------------------------------------------------------- pushing

def test_command_line_push_uploads_the_export_with_the_token_unprinted(pushed, stand_in):
  result, out = pushed
  head = stand_in.repos[REPO]["commits"][-1][0]
  assert f"{stand_in.url}/{REPO}/commit/{head}" in result.stdout
  assert f"Predictor.from_pretrained('{REPO}')" in result.stdout
  arrived = {path: hashlib.sha256(data).hexdigest() for path, data in stand_in.files(REPO).items()}
  assert arrived.pop(".gitattributes")  # the hub's own, made with the repository
  assert arrived == _sha256s(out)
  assert set(stand_in.lfs_objects) == {arrived[name] for name in
                                       ("model.safetensors", "vad_table.npy", "output_vocab.npy")}
  assert stand_in.repos[REPO]["private"]
  api = ("/api/repos/", "/api/models/", "/api/validate-yaml", f"/{REPO}.git/")  # not the LFS PUTs
  api_calls = [(path, auth) for _, path, auth in stand_in.requests if path.startswith(api)]
  assert {path for path, _ in api_calls} >= {
      "/api/repos/create", f"/api/models/{REPO}/preupload/main", f"/{REPO}.git/info/lfs/objects/batch",
      f"/api/models/{REPO}/commit/main"}
  assert all(auth == f"Bearer {TOKEN}" for _, auth in api_calls)
  assert TOKEN not in result.stdout + result.stderr


def test_push_with_hf_xet_installed_replaces_the_export_files(hub_at, monkeypatch, tiny_run, tmp_path,
                                                               pushed):
  """The default client (with hf_xet, which huggingface_hub installs: upload_folder's streamed
  pipeline) against a hub that takes every file as a regular one; pushing an export without its
  VAD table then removes the table from the repository, and an unchanged push commits nothing."""
  _, out = pushed
  server = StandInHub(tokens={TOKEN})
  try:
    hub_at(server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    publish.push_export(out, "me/xet")
    assert {p: hashlib.sha256(d).hexdigest() for p, d in server.files("me/xet").items()
            if p != ".gitattributes"} == _sha256s(out)
    bare = export_lib.export_model(str(tiny_run), str(tmp_path / "bare"), include_vad_table=False)
    url = publish.push_export(bare, "me/xet", lexicon=str(vad_lib.DEMO_LEXICON_PATH))
    files = server.files("me/xet")
    assert "vad_table.npy" not in files and ".gitattributes" in files
    assert {p: hashlib.sha256(d).hexdigest() for p, d in files.items() if p != ".gitattributes"} == _sha256s(bare)
    commits = len(server.repos["me/xet"]["commits"])
    assert publish.push_export(bare, "me/xet", lexicon=str(vad_lib.DEMO_LEXICON_PATH)) == url
    assert len(server.repos["me/xet"]["commits"]) == commits
  finally:
    server.close()


def test_push_errors_say_what_to_do_and_never_the_token(hub_at, monkeypatch, pushed, stand_in):
  _, out = pushed
  hub_at(stand_in.url)
  with pytest.raises(errors.HubError, match="no Hugging Face token was found; log in with `hf auth login`"):
    publish.push_export(out, "me/other")
  monkeypatch.setenv("HF_TOKEN", "hf_wrongSecret")
  with pytest.raises(errors.HubError, match=r"refused the token \(401 Unauthorized\)") as refused:
    publish.push_export(out, "me/other")
  assert "hf_wrongSecret" not in str(refused.value) and "\n" not in str(refused.value)
  hub_at("http://127.0.0.1:9")  # nothing listens there
  with pytest.raises(errors.HubError, match="the hub could not be reached .*check the network"):
    publish.push_export(out, "me/other")
  with pytest.raises(errors.ConfigError, match="is not a hub repository id: give OWNER/NAME"):
    publish.push_export(out, "no-owner")


# ----------------------------------------------------------------------------- downloading

def test_offline_cache_loads_by_hub_name_and_predicts_as_the_folder(hub_at, monkeypatch, pushed, stand_in,
                                                                    test_images):
  _, out = pushed
  head = stand_in.repos[REPO]["commits"][-1][0]
  snapshot = huggingface_hub.snapshot_download(REPO, endpoint=stand_in.url, token=TOKEN,
                                               cache_dir=constants.HF_HUB_CACHE)  # the real layout
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  requests = len(stand_in.requests)
  from_hub = predictor_lib.Predictor.from_pretrained(REPO)
  assert hub.resolve(REPO, revision=head) == pathlib.Path(snapshot)  # a commit: the same snapshot
  assert len(stand_in.requests) == requests, "offline: nothing was asked of the hub"
  from_dir = predictor_lib.Predictor.from_pretrained(str(out))
  assert from_hub.predict(test_images) == from_dir.predict(test_images)


def test_misses_name_the_repository_and_what_to_do(hub_at, monkeypatch, pushed, stand_in, tmp_path):
  _, out = pushed
  hub_at(stand_in.url)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  with pytest.raises(errors.CheckpointError, match=(
      "'me/sevlm-tiny' is not a local file or directory, and it is not in the Hugging Face cache "
      rf"\({constants.HF_HUB_CACHE}\) and HF_HUB_OFFLINE=1 is set")):
    predictor_lib.Predictor.from_pretrained(REPO)
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
  with pytest.raises(errors.CheckpointError, match="no model repository of that name that this machine may "
                     "read: check the name; for a private repository log in"):
    predictor_lib.Predictor.from_pretrained(REPO)  # private, and no token here
  monkeypatch.setenv("HF_TOKEN", TOKEN)
  with pytest.raises(errors.CheckpointError, match=r"'me/sevlm-tiny' \(revision v9\) .*has no revision 'v9'"):
    predictor_lib.Predictor.from_pretrained(REPO, revision="v9")
  with pytest.raises(errors.CheckpointError, match="'me/nothing-here' .*no model repository of that name"):
    predictor_lib.Predictor.from_pretrained("me/nothing-here")
  with pytest.raises(errors.ConfigError, match="revision='v1' picks a version of a hub repository"):
    predictor_lib.Predictor.from_pretrained(str(out), revision="v1")


# ----------------------------------------------------------------------------- the card

def test_card_front_matter_parses_back_with_the_run_metrics(pushed, tiny_run, stand_in):
  _, out = pushed
  card = huggingface_hub.ModelCard.load(out / "README.md")
  assert huggingface_hub.metadata_load(out / "README.md") == card.data.to_dict()
  assert stand_in.validated[-1] == card.data.to_dict()  # the client had the hub check it
  data = card.data
  assert (data.license, data.library_name, data.pipeline_tag) == ("apache-2.0", "sevlm_jax", "image-to-text")
  assert {"emotion", "art", "affective-computing", "explainability", "jax", "flax"} <= set(data.tags)
  assert data.datasets is None and data.base_model is None  # the demo: no ArtEmis, nothing pretrained
  metrics = json.loads((tiny_run / "metrics_test.json").read_text())
  expected = {k: metrics[k] for k in ("ACC", "EA", "EA_judge_heldout_accuracy", "Unique")}
  expected.update({k: v for k, v in metrics["captions"].items() if k != "num_items"})
  key_of = {name: key for key, (_, name) in card_metadata.TOP_LEVEL_METRICS.items()}
  assert {key_of.get(r.metric_name, r.metric_name): r.metric_value for r in data.eval_results} == expected
  assert {(r.task_type, r.dataset_type, r.dataset_split) for r in data.eval_results} == {
      ("image-to-text", "sevlm_jax-demo", "test")}
  assert card.text.lstrip().startswith("# SEVLM model")  # the body follows the front matter
  for source in ("github.com/optas/artemis", "LICENSE", "issue 3", "https://www.wikiart.org/en/terms-of-use",
                 "github.com/cs-chan/ArtGAN"):
    assert source in card.text, source


def test_card_front_matter_of_an_artemis_run_names_its_terms_and_base_models(tiny_run):
  config = migrate.load_json(tiny_run / "config.json")
  config.data.source = "artemis_v1"
  config.pretrained.clip = "openai/clip-vit-base-patch16"
  config.pretrained.gpt2 = "distilgpt2"
  manifest = {"vad_table": {"included": True, "demo_lexicon": False}}  # a table from NRC-VAD
  data = huggingface_hub.ModelCard(card_metadata.front_matter(config, None, manifest) + "text\n").data
  assert (data.license, data.license_name, data.license_link) == (
      "other", "artemis-terms-and-nrc-vad-terms", "https://www.artemisdataset.org/")
  assert data.datasets == ["ArtEmis"] and data.eval_results is None
  assert data.base_model == ["openai/clip-vit-base-patch16", "distilgpt2"]
  config.pretrained.sevlm = "jing5566/SEVLM"  # the authors' weights replace distilgpt2
  config.data.source = "demo"
  data = huggingface_hub.ModelCard(card_metadata.front_matter(
      config, None, {"vad_table": {"included": False, "demo_lexicon": False}}) + "text\n").data
  assert (data.license, data.license_name, data.datasets) == ("other", "artemis-terms", None)
  assert data.base_model == ["openai/clip-vit-base-patch16", "jing5566/SEVLM"]


def test_a_hub_repository_in_the_authors_layout_goes_to_from_released(hub_at, monkeypatch, tmp_path):
  """from_pretrained("owner/name") of a repository holding nle_model_<name>/ and
  ckpt_stats_<name>.tar (the authors' jing5566/SEVLM) hands the downloaded folder to
  from_released, with the lexicon given."""
  authors = tmp_path / "authors"
  (authors / "nle_model_7").mkdir(parents=True)
  (authors / "nle_model_7" / "config.json").write_text("{}")
  (authors / "ckpt_stats_7.tar").write_bytes(b"not read here")
  server = StandInHub(tokens={TOKEN})
  try:
    hub_at(server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = huggingface_hub.HfApi()
    api.create_repo("authors/SEVLM")
    api.upload_folder(repo_id="authors/SEVLM", folder_path=authors)
    calls = []
    monkeypatch.setattr(predictor_lib.Predictor, "from_released", classmethod(
        lambda cls, source, **kwargs: calls.append((source, kwargs))))
    predictor_lib.Predictor.from_pretrained("authors/SEVLM", lexicon="lexicon.tsv")
    ((source, kwargs),) = calls
    assert (pathlib.Path(source) / "ckpt_stats_7.tar").read_bytes() == b"not read here"
    assert kwargs == {"lexicon": "lexicon.tsv", "batch_size": None}
  finally:
    server.close()
