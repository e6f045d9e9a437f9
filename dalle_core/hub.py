"""The Hugging Face Hub: `from_pretrained("user/repo")` for every model and the pipeline, and `push_to_hub`.

`resolve` turns a name into a local folder: an existing path is used as it is; otherwise a name shaped like a
Hub repo id ("user/repo") is fetched with `huggingface_hub.snapshot_download` (installed with Accelerate),
which honours `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE` (the cache alone, no network). What comes down is read
as data by the same loaders as a local folder: JSON configs and safetensors, never code.

`push_to_hub(obj, repo_id)` saves a model or a `DALLEPipeline` into a temporary folder, adds a model card
(`model_card`: what it is, what it was trained on and its scores when given, how to load it) and uploads the
folder with `HfApi.upload_folder`.
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .utils import optional_import
from .version import __version__

__all__ = ["resolve", "push_to_hub", "model_card", "is_repo_id"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}$")


def is_repo_id(name: Any) -> bool:
    """Whether `name` is a string shaped like a Hub repo id ("user/repo")."""
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and ".." not in name


def _hub() -> Any:
    return optional_import("huggingface_hub", "loading from and pushing to the Hugging Face Hub",
                           'pip install "huggingface_hub"')


def resolve(name: Union[str, Path], *, revision: Optional[str] = None) -> Path:
    """A local folder for `name`: the path itself when it exists (or is not a repo id), else the snapshot of the
    Hub repo `name` at `revision` (downloaded, or from the cache with HF_HUB_OFFLINE=1)."""
    path = Path(name)
    if path.exists() or not is_repo_id(name):
        return path
    hub = _hub()
    try:
        return Path(hub.snapshot_download(repo_id=str(name), revision=revision))
    except (OSError, ValueError) as err:  # offline without a cached copy, no such repo, no network: say which
        raise FileNotFoundError(f"{name}: no such local folder, and the Hugging Face Hub repo {name!r} could not "
                                f"be fetched ({type(err).__name__}: {err})") from None


def _describe(obj: Any) -> Dict[str, Any]:
    """What the card says the object is: its class, size, and for a pipeline its pieces."""
    pieces = {"dalle": getattr(obj, "dalle", None), "clip": getattr(obj, "clip", None)}
    model = pieces["dalle"] or obj
    info: Dict[str, Any] = {"class": type(obj).__name__,
                            "parameters": sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters")
                            else None}
    vae = getattr(model, "vae", None)
    if vae is not None:
        info["image_tokenizer"] = f"{type(vae).__name__} ({vae.num_tokens} codes, {vae.image_size}px images)"
    if getattr(obj, "tokenizer", None) is not None:
        info["tokenizer"] = f"{type(obj.tokenizer).__name__} ({obj.tokenizer.vocab_size} ids)"
    if hasattr(obj, "dalle"):
        info["clip"] = "yes" if pieces["clip"] is not None else "no"
    return info


def model_card(obj: Any, repo_id: str, *, trained_on: Optional[str] = None,
               scores: Optional[Dict[str, Any]] = None) -> str:
    """A README.md for the Hub: what `obj` is, what it was trained on and its scores (when given), how to load."""
    info = _describe(obj)
    loader = "DALLEPipeline" if hasattr(obj, "dalle") else info["class"]
    lines = ["---", "library_name: dalle-core", "tags:", "- text-to-image", "- dall-e", "---", "",
             f"# {repo_id}", "", f"A dalle-core {info['class']}, saved with dalle-core {__version__}.", ""]
    lines += [f"- {key.replace('_', ' ')}: {value}" for key, value in info.items() if key != "class"]
    lines += ["", "## Training data", "", trained_on or "Not recorded.", "", "## Scores", ""]
    lines += ([f"- {key}: {value}" for key, value in scores.items()] if scores else ["Not recorded."])
    lines += ["", "## Loading", "", "```python", f"from dalle_core import {loader}", "",
              f'model = {loader}.from_pretrained("{repo_id}")', "```", ""]
    if loader == "DALLEPipeline":
        lines[-2:-2] = ['images = model("a red circle", num_images=4, seed=0).images']
    return "\n".join(lines)


def push_to_hub(obj: Any, repo_id: str, *, token: Optional[str] = None, private: bool = False,
                commit_message: Optional[str] = None, trained_on: Optional[str] = None,
                scores: Optional[Dict[str, Any]] = None, api: Any = None) -> Any:
    """Upload `obj` (a dalle-core model or a `DALLEPipeline`) to the Hub repo `repo_id` (created if missing):
    its `save_pretrained` folder plus a generated model card. `api`: an `HfApi`-like object (default
    `HfApi(token=token)`). Returns what `upload_folder` returns."""
    if not is_repo_id(repo_id):
        raise ValueError(f"repo_id must look like 'user/repo', got {repo_id!r}")
    if not callable(getattr(obj, "save_pretrained", None)):
        raise TypeError(f"push_to_hub uploads a dalle-core model or pipeline, got {type(obj).__name__}")
    if scores is not None:
        json.dumps(scores)  # refuse what cannot be written, before anything is sent
    api = api if api is not None else _hub().HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        obj.save_pretrained(tmp)
        (Path(tmp) / "README.md").write_text(model_card(obj, repo_id, trained_on=trained_on, scores=scores),
                                             encoding="utf-8")
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(folder_path=tmp, repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"Upload {type(obj).__name__} with dalle-core")
