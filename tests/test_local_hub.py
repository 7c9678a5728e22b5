"""The local Hub emulator against the real, unmodified huggingface_hub and transformers clients."""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from huggingface_hub import (
    HfApi,
    ModelCard,
    constants,
    create_branch,
    create_repo,
    create_tag,
    hf_hub_download,
    list_repo_commits,
    list_repo_files,
    snapshot_download,
    upload_file,
    upload_folder,
)
from huggingface_hub.hf_api import RepoFolder
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from hub_fixtures import local_hub, local_hub_module  # noqa: F401  (pytest fixtures)

from modeling_bigmoe.testing.local_hub import LFS_THRESHOLD, LocalHub, git_blob_sha1, use_local_hub


def _hub_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("LocalHub-")]


def _raw(method: str, url: str, body: bytes | None = None,
         headers: dict | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


# --------------------------------------------------------------------------- server lifecycle
def test_binds_loopback_and_stops_without_leftover_threads():
    before = _hub_threads()
    hub = LocalHub().start()
    host, port = hub._server.socket.getsockname()[:2]
    assert host == "127.0.0.1" and port > 0 and hub.url == f"http://127.0.0.1:{port}"
    # Two keep-alive connections left open by the client: stop() must still end their threads.
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(2)]
    for conn in conns:
        conn.request("GET", "/api/models/user/missing")
        response = conn.getresponse()
        assert response.status == 404 and response.getheader("X-Error-Code") == "RepoNotFound"
        response.read()
    assert len(_hub_threads()) >= 3  # serve loop + 2 connections
    hub.stop()
    assert _hub_threads() == before
    with pytest.raises(ConnectionError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/api/whoami-v2")
    hub.stop()  # idempotent
    with pytest.raises(RuntimeError, match="not running"):
        hub.url
    for conn in conns:
        conn.close()


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="port"):
        LocalHub(port=70000)
    with pytest.raises(ValueError, match="user"):
        LocalHub(user="a b")
    with pytest.raises(ValueError, match="url"):
        with use_local_hub("127.0.0.1:80"):
            pass


def test_use_local_hub_patches_and_restores():
    before = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_DISABLE_XET)
    from huggingface_hub import hf_api

    with LocalHub() as hub, use_local_hub(hub.url + "/") as endpoint:
        assert endpoint == hub.url == constants.ENDPOINT == hf_api.api.endpoint
        assert constants.HUGGINGFACE_CO_URL_TEMPLATE.format(repo_id="a/b", revision="main", filename="f") == (
            f"{hub.url}/a/b/resolve/main/f")
        assert constants.HF_HUB_DISABLE_XET is True
    assert (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_DISABLE_XET) == before
    assert hf_api.api.endpoint == before[0]
    # transformers caches one HfApi: a client built before the block is swapped out, then put back.
    from transformers.utils import hub as tf_hub

    old_client = tf_hub.hf_api()
    with LocalHub() as hub, use_local_hub(hub.url):
        assert tf_hub.hf_api().endpoint == hub.url
        assert os.environ["HF_ENDPOINT"] == hub.url  # for subprocesses
    assert tf_hub.hf_api() is old_client and old_client.endpoint == before[0]
    assert os.environ["HF_ENDPOINT"] == before[0]


# --------------------------------------------------------------------------- huggingface_hub client
def test_create_repo_conflict_and_exist_ok(local_hub):
    url = create_repo("demo")
    assert url.repo_id == "user/demo" and url.endpoint == local_hub.url
    with pytest.raises(HfHubHTTPError) as info:
        create_repo("demo")
    assert info.value.response.status_code == 409
    assert create_repo("demo", exist_ok=True).repo_id == "user/demo"
    assert create_repo("org/other", private=True).repo_id == "org/other"
    info_ = HfApi().model_info("org/other")
    assert info_.private is True and [s.rfilename for s in info_.siblings] == [".gitattributes"]
    assert HfApi().whoami()["name"] == "user"


def test_upload_folder_file_list_and_download(local_hub, tmp_path):
    repo = create_repo("files").repo_id
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    contents = {"a.txt": b"alpha\n", "sub/b.json": b'{"b": 2}', "sub/deep/c.md": b"# c\n"}
    for name, data in contents.items():
        (src / name).write_bytes(data)
    upload_folder(repo_id=repo, folder_path=str(src), commit_message="add folder")
    upload_file(path_or_fileobj=b"single", path_in_repo="single.txt", repo_id=repo, commit_message="one file")
    expected = sorted([".gitattributes", "single.txt", *contents])
    assert sorted(list_repo_files(repo)) == expected
    assert [c.title for c in list_repo_commits(repo)] == ["one file", "add folder", "initial commit"]
    path = hf_hub_download(repo, "sub/deep/c.md")
    assert open(path, "rb").read() == contents["sub/deep/c.md"]
    snap = snapshot_download(repo)
    for name, data in contents.items():
        assert (tmp_path / snap / name).read_bytes() == data
    # The tree listing reports git blob ids the client can check itself.
    entries = {e.path: e for e in HfApi().list_repo_tree(repo, recursive=True)}
    assert entries["a.txt"].blob_id == git_blob_sha1(b"alpha\n") and entries["a.txt"].lfs is None
    assert {p for p, e in entries.items() if isinstance(e, RepoFolder)} == {"sub", "sub/deep"}
    # Re-uploading an unchanged file makes no new commit (the preupload endpoint reports the remote oid).
    upload_file(path_or_fileobj=b"single", path_in_repo="single.txt", repo_id=repo)
    assert len(list_repo_commits(repo)) == 3


def test_large_safetensors_goes_through_lfs(local_hub, tmp_path):
    from safetensors.numpy import load_file, save_file

    repo = create_repo("big").repo_id
    weights = {"w": np.arange(LFS_THRESHOLD // 4 + 4096, dtype=np.float32)}
    path = tmp_path / "model.safetensors"
    save_file(weights, str(path))
    data = path.read_bytes()
    assert len(data) > 10 * 1024 * 1024
    sha = hashlib.sha256(data).hexdigest()
    upload_file(path_or_fileobj=str(path), path_in_repo="model.safetensors", repo_id=repo)
    assert ("PUT", f"/lfs-upload/{sha}") in local_hub.requests
    assert ("POST", f"/lfs-verify/{sha}") in local_hub.requests
    (info,) = HfApi().get_paths_info(repo, ["model.safetensors"])
    assert info.lfs.sha256 == sha and info.lfs.size == len(data) and info.size == len(data)
    got = hf_hub_download(repo, "model.safetensors")
    assert hashlib.sha256(open(got, "rb").read()).hexdigest() == sha
    np.testing.assert_array_equal(load_file(got)["w"], weights["w"])
    # Pushing the same bytes again: the LFS batch says "already stored", so nothing is PUT twice.
    n_puts = sum(m == "PUT" for m, _ in local_hub.requests)
    upload_file(path_or_fileobj=str(path), path_in_repo="copy.safetensors", repo_id=repo)
    assert sum(m == "PUT" for m, _ in local_hub.requests) == n_puts
    assert HfApi().get_paths_info(repo, ["copy.safetensors"])[0].lfs.sha256 == sha


def test_lfs_upload_with_wrong_hash_or_size_is_rejected(local_hub):
    repo = create_repo("lfs").repo_id
    good = b"the real bytes"
    oid = hashlib.sha256(good).hexdigest()
    batch = {"operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
             "objects": [{"oid": oid, "size": len(good)}]}
    status, body, _ = _raw("POST", f"{local_hub.url}/{repo}.git/info/lfs/objects/batch",
                           json.dumps(batch).encode(), {"Content-Type": "application/vnd.git-lfs+json"})
    assert status == 200
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    status, _, headers = _raw("PUT", href, b"the fake bytes")  # same length, other content
    assert status == 400 and "sha256 mismatch" in headers["X-Error-Message"]
    status, _, headers = _raw("PUT", href, good + b"!")
    assert status == 400 and "announced 14" in headers["X-Error-Message"]
    # A commit that points at the never-stored object is refused.
    ndjson = b"\n".join(json.dumps(x).encode() for x in [
        {"key": "header", "value": {"summary": "sneaky"}},
        {"key": "lfsFile", "value": {"path": "x.bin", "algo": "sha256", "oid": oid, "size": len(good)}}])
    status, _, headers = _raw("POST", f"{local_hub.url}/api/models/{repo}/commit/main", ndjson)
    assert status == 422 and "never uploaded" in headers["X-Error-Message"]
    assert _raw("PUT", href, good)[0] == 200
    assert _raw("POST", f"{local_hub.url}/api/models/{repo}/commit/main", ndjson)[0] == 200
    assert hf_hub_download(repo, "x.bin") and HfApi().get_paths_info(repo, ["x.bin"])[0].lfs.sha256 == oid
    # A regular file in a commit is stored as base64 and gets its git blob id.
    ndjson = b"\n".join(json.dumps(x).encode() for x in [
        {"key": "header", "value": {"summary": "plain"}},
        {"key": "file", "value": {"path": "p.txt", "encoding": "base64",
                                  "content": base64.b64encode(b"p").decode()}}])
    assert _raw("POST", f"{local_hub.url}/api/models/{repo}/commit/main", ndjson)[0] == 200
    assert HfApi().get_paths_info(repo, ["p.txt"])[0].blob_id == git_blob_sha1(b"p")


def test_dataset_repo_type(local_hub):
    repo = create_repo("frames", repo_type="dataset").repo_id
    upload_file(path_or_fileobj=b"id,label\n0,live\n", path_in_repo="data/train.csv", repo_id=repo,
                repo_type="dataset")
    assert list_repo_files(repo, repo_type="dataset") == [".gitattributes", "data/train.csv"]
    got = hf_hub_download(repo, "data/train.csv", repo_type="dataset")
    assert open(got, "rb").read() == b"id,label\n0,live\n"
    with pytest.raises(RepositoryNotFoundError):  # a model repo of that name does not exist
        hf_hub_download(repo, "data/train.csv")


def test_revision_pins_branch_tag_and_commit(local_hub):
    repo = create_repo("revs").repo_id
    v1 = upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id=repo).oid
    create_branch(repo, branch="dev")
    create_tag(repo, tag="v1.0", revision=v1)
    upload_file(path_or_fileobj=b"v2-dev", path_in_repo="f.txt", repo_id=repo, revision="dev")
    upload_file(path_or_fileobj=b"only-dev", path_in_repo="dev.txt", repo_id=repo, revision="dev")
    upload_file(path_or_fileobj=b"v3-main", path_in_repo="f.txt", repo_id=repo)

    def read(revision):
        return open(hf_hub_download(repo, "f.txt", revision=revision), "rb").read()

    assert (read("main"), read("dev"), read(v1), read("v1.0")) == (b"v3-main", b"v2-dev", b"v1", b"v1")
    assert sorted(list_repo_files(repo, revision="dev")) == [".gitattributes", "dev.txt", "f.txt"]
    assert "dev.txt" not in list_repo_files(repo)
    assert HfApi().model_info(repo, revision="v1.0").sha == v1
    refs = HfApi().list_repo_refs(repo)
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.target_commit for t in refs.tags] == [v1]
    snap = snapshot_download(repo, revision="dev")
    assert open(f"{snap}/dev.txt", "rb").read() == b"only-dev"
    # A pull request branch.
    pr = upload_file(path_or_fileobj=b"pr", path_in_repo="f.txt", repo_id=repo, create_pr=True)
    assert pr.pr_num == 1 and read("refs/pr/1") == b"pr" and read("main") == b"v3-main"


def test_missing_repo_file_and_revision_raise_client_errors(local_hub):
    repo = create_repo("errs").repo_id
    upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("user/nope", "x.txt")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("user/nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "missing.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "x.txt", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        list_repo_files(repo, revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="user/nope")


def test_download_again_offline_from_cache(local_hub, monkeypatch):
    repo = create_repo("offline").repo_id
    upload_file(path_or_fileobj=b"cached!", path_in_repo="c.txt", repo_id=repo)
    online = hf_hub_download(repo, "c.txt")
    snap_online = snapshot_download(repo)
    n_requests = len(local_hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hf_hub_download(repo, "c.txt") == online
    assert open(online, "rb").read() == b"cached!"
    assert snapshot_download(repo) == snap_online
    assert len(local_hub.requests) == n_requests  # not a single request went out
    with pytest.raises(FileNotFoundError):  # LocalEntryNotFoundError: not in the cache
        hf_hub_download(repo, "never-downloaded.txt")


def test_model_card_with_yaml_metadata(local_hub):
    repo = create_repo("card").repo_id
    card = ModelCard("---\nlicense: mit\ntags:\n- face-anti-spoofing\n- bigmoe\n---\n# Tiny card\n")
    card.push_to_hub(repo)
    assert ("POST", "/api/validate-yaml") in local_hub.requests
    loaded = ModelCard.load(repo)
    assert loaded.data.license == "mit" and loaded.data.tags == ["face-anti-spoofing", "bigmoe"]
    assert "# Tiny card" in loaded.text
    ModelCard("# No metadata at all\n").validate()  # the client writes '---\n{}\n---': accepted
    # The client parses YAML itself before sending, so malformed blocks are sent raw to check the server.
    for content, expected in [("---\nlicense: mit\n# no end\n", "never closed"),
                              ("---\nlicense: mit\nnot yaml at all\n---\n", "line 3")]:
        status, body, _ = _raw("POST", f"{local_hub.url}/api/validate-yaml",
                               json.dumps({"repoType": "model", "content": content}).encode(),
                               {"Content-Type": "application/json", "Accept": "text/plain"})
        assert status == 400 and expected in body.decode()


# --------------------------------------------------------------------------- transformers client
def _tiny_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            image_size=32, patch_size=8)


def test_transformers_push_to_hub_and_from_pretrained(local_hub):
    from transformers import CLIPVisionModel

    model = CLIPVisionModel(_tiny_vision_config()).eval()
    model.push_to_hub("tiny-clip")
    assert {"config.json", "model.safetensors"} <= set(list_repo_files("user/tiny-clip"))
    assert any(m == "PUT" for m, _ in local_hub.requests)  # the weights went through LFS
    again = CLIPVisionModel.from_pretrained("user/tiny-clip").eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(pixel_values=pixels), again(pixel_values=pixels)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert torch.equal(a.pooler_output, b.pooler_output)


def test_trainer_every_save_pushes_each_checkpoint(local_hub, tmp_path):
    from transformers import (CLIPConfig, CLIPForImageClassification, Trainer, TrainerCallback,
                              TrainingArguments)

    class WaitForPush(TrainerCallback):
        """Let each background push finish before training goes on.

        Trainer uploads ``output_dir`` in a background thread and copies the next checkpoint's weights over
        it at the next save; a save during a running upload changes the bytes under the client (the server
        then rejects the LFS object's sha256), so the test waits, as a slow real training loop would.
        """

        trainer = None

        def on_save(self, args, state, control, **kwargs):
            if self.trainer.push_in_progress is not None:
                self.trainer.push_in_progress.wait_until_done()

    config = CLIPConfig(vision_config=_tiny_vision_config().to_dict(),
                        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                                     "num_attention_heads": 4},
                        projection_dim=16, num_labels=2)
    model = CLIPForImageClassification(config)
    gen = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(3, 32, 32, generator=gen), "labels": i % 2} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / "tiny-trainer"), push_to_hub=True,
                             hub_strategy="every_save", hub_model_id="tiny-trainer", use_cpu=True,
                             report_to="none", max_steps=4, save_steps=2, save_strategy="steps",
                             per_device_train_batch_size=2, learning_rate=1e-2, disable_tqdm=True,
                             logging_strategy="no")
    waiter = WaitForPush()
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[waiter])
    waiter.trainer = trainer
    trainer.train()
    assert all(job.exception() is None for job in trainer.push_in_progress.jobs)
    titles = [c.title for c in list_repo_commits("user/tiny-trainer")]
    assert titles == ["Training in progress, step 4", "Training in progress, step 2", "initial commit"]
    files = set(list_repo_files("user/tiny-trainer"))
    assert {"config.json", "model.safetensors", "training_args.bin"} <= files
    # The last push carries the final weights, and they differ from the step-2 ones.
    pulled = CLIPForImageClassification.from_pretrained("user/tiny-trainer")
    step2 = CLIPForImageClassification.from_pretrained("user/tiny-trainer", revision=list_repo_commits(
        "user/tiny-trainer")[1].commit_id)
    final = trainer.model.state_dict()
    for name, value in pulled.state_dict().items():
        assert torch.equal(value, final[name].cpu()), name
    assert not torch.equal(step2.classifier.weight, pulled.classifier.weight)


# --------------------------------------------------------------------------- the module-scoped fixture
def test_module_fixture_first_use(local_hub_module):
    repo = create_repo("shared").repo_id
    upload_file(path_or_fileobj=b"kept", path_in_repo="k.txt", repo_id=repo)
    assert constants.ENDPOINT == local_hub_module.url


def test_module_fixture_state_persists(local_hub_module):
    assert open(hf_hub_download("user/shared", "k.txt"), "rb").read() == b"kept"
    assert ("POST", "/api/repos/create") in local_hub_module.requests


_REMOTE_CODE = '''
import torch
from transformers import PreTrainedConfig, PreTrainedModel


class TinyRemoteConfig(PreTrainedConfig):
    model_type = "tiny_remote_hub_test"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)


class TinyRemoteModel(PreTrainedModel):
    config_class = TinyRemoteConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.width, 2)
        self.post_init()

    def forward(self, x):
        return self.proj(x)
'''


def test_trust_remote_code_pull_of_pushed_code(local_hub, tmp_path, monkeypatch):
    import importlib

    from transformers import AutoModel

    (tmp_path / "tiny_remote_hub_test.py").write_text(_REMOTE_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("tiny_remote_hub_test")
    module.TinyRemoteConfig.register_for_auto_class()
    module.TinyRemoteModel.register_for_auto_class("AutoModel")
    model = module.TinyRemoteModel(module.TinyRemoteConfig(width=4)).eval()
    model.push_to_hub("tiny-remote")
    assert "tiny_remote_hub_test.py" in list_repo_files("user/tiny-remote")
    monkeypatch.delitem(sys.modules, "tiny_remote_hub_test")
    pulled = AutoModel.from_pretrained("user/tiny-remote", trust_remote_code=True).eval()
    assert type(pulled).__module__ != "tiny_remote_hub_test"  # loaded from the downloaded code
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.equal(pulled(x), model(x))
