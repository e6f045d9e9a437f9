"""The Hugging Face Hub without a network: loading a repo id from a cache laid out as huggingface_hub lays it
out (HF_HUB_OFFLINE=1), and push_to_hub against a stand-in HfApi that records what is sent."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dalle_core import DALLEPipeline
from dalle_core.hub import is_repo_id, model_card, resolve
from helpers import cli_env, tiny_pipeline
from helpers import one_thread  # noqa: F401  (its autouse fixture: one thread, as in the subprocess)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache: Path, repo_id: str, source: Path) -> None:
    """Lay `source` out as huggingface_hub's cache holds a downloaded model repo at COMMIT (refs/main)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)


def test_repo_ids_load_from_the_hub_cache_offline(tmp_path):
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    pipe.dalle.vae.save_pretrained(tmp_path / "vae")
    cache = tmp_path / "cache"
    _cache_repo(cache, "someone/shapes-pipeline", tmp_path / "pipe")
    _cache_repo(cache, "someone/shapes-dvae", tmp_path / "vae")
    script = (
        "import torch\ntorch.set_num_threads(1)\n"
        "from dalle_core import DALLEPipeline, DiscreteVAE\n"
        "pipe = DALLEPipeline.from_pretrained('someone/shapes-pipeline')\n"
        "torch.save(pipe('a red circle', num_images=2, seed=0).tensors, 'out.pt')\n"
        "vae = DiscreteVAE.from_pretrained('someone/shapes-dvae')\n"
        "print(type(vae).__name__, vae.num_tokens)\n"
        "try:\n"
        "    DiscreteVAE.from_pretrained('someone/not-cached')\n"
        "except FileNotFoundError as err:\n"
        "    print('missing:', err)\n")
    env = {**cli_env(), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "DiscreteVAE 16" in done.stdout
    assert "missing: someone/not-cached: no such local folder" in done.stdout
    expected = pipe("a red circle", num_images=2, seed=0).tensors
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the repo created and copies the folder uploaded."""

    def __init__(self, into: Path):
        self.into, self.calls = into, []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def upload_folder(self, *, folder_path, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        shutil.copytree(folder_path, self.into)
        return "https://huggingface.co/" + kwargs["repo_id"]


def test_push_to_hub_sends_the_saved_folder_and_a_model_card(tmp_path):
    pipe = tiny_pipeline()
    api = RecordingApi(tmp_path / "sent")
    url = pipe.push_to_hub("someone/shapes", api=api, private=True, trained_on="20,000 shapes renders",
                           scores={"seen plain": 0.95})
    assert url.endswith("someone/shapes")
    assert api.calls[0] == ("create_repo", dict(repo_id="someone/shapes", private=True, exist_ok=True,
                                                repo_type="model"))
    sent = sorted(str(p.relative_to(tmp_path / "sent")) for p in (tmp_path / "sent").rglob("*") if p.is_file())
    assert {"README.md", "pipeline.json", "tokenizer.json", "dalle/model.safetensors", "dalle/config.json",
            "clip/model.safetensors"} <= set(sent)
    card = (tmp_path / "sent" / "README.md").read_text()
    assert "20,000 shapes renders" in card and "seen plain: 0.95" in card
    assert 'DALLEPipeline.from_pretrained("someone/shapes")' in card
    # what was sent loads back as the same pipeline
    again = DALLEPipeline.from_pretrained(tmp_path / "sent")
    assert torch.equal(again("a red circle", num_images=1, seed=1).tensors,
                       pipe("a red circle", num_images=1, seed=1).tensors)
    # a single model too
    api = RecordingApi(tmp_path / "sent_vae")
    pipe.dalle.vae.push_to_hub("someone/dvae", api=api)
    assert (tmp_path / "sent_vae" / "model.safetensors").is_file()
    assert "DiscreteVAE.from_pretrained" in (tmp_path / "sent_vae" / "README.md").read_text()


def test_bad_repo_ids_and_local_paths():
    assert is_repo_id("user/repo") and not is_repo_id("/abs/path") and not is_repo_id("a/b/c")
    assert not is_repo_id("../etc") and not is_repo_id("user/..")
    assert resolve(os.getcwd()) == Path(os.getcwd())
    with pytest.raises(ValueError, match="user/repo"):
        tiny_pipeline().push_to_hub("not a repo", api=RecordingApi(Path("unused")))
    assert "Not recorded." in model_card(tiny_pipeline(), "a/b")
