"""The package's structure: imports without cycles or private names, one config per model that reaches the
trainers and the command line, subclasses that record their own arguments."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Dict, List, Set

import pytest
import torch

from dalle_core import CLIP, DALLE, DiscreteVAE
from dalle_core.pretrained import MODEL_CLASSES, build_like
from dalle_core.training.clip import CLIPTrainConfig
from dalle_core.training.config import add_config_arguments, argument_docs, config_to_dict, load_config_file
from dalle_core.training.dalle import DALLETrainConfig
from dalle_core.training.vae import VAETrainConfig
from dalle_core.dalle2 import Decoder, DiffusionPrior, Unet
from dalle_core.dalle2.training import DecoderTrainConfig, PriorTrainConfig

PACKAGE = Path(__file__).resolve().parents[1] / "dalle_core"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> List[tuple]:
    """(imported dalle_core module, names imported from it) for every import in `path`, at any depth."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("dalle_core"):
                continue
            for alias in node.names:  # `from . import data`: the submodule itself
                sub = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    PACKAGE.parent / Path(*sub.split("."))).is_dir()
                found.append((sub, None) if is_module else (target, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.startswith("dalle_core")]
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_the_package_imports_without_cycles():
    graph: Dict[str, Set[str]] = {m: {t for t, _ in imports_of(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    state: Dict[str, int] = {}

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for module, path in MODULES.items():
        for target, name in imports_of(path):
            private_module = any(part.startswith("_") and not part.startswith("__") for part in target.split("."))
            if private_module or (name is not None and name.startswith("_") and not name.startswith("__")):
                offenders.append(f"{module}: {target}{'.' + name if name else ''}")
    assert not offenders, offenders


def test_no_module_sets_private_attributes_of_objects_it_does_not_own():
    """`obj._x = ...` only on `self` (and `cls`) when another module's class keeps `self._x`: that state is its
    own business (a module may tag objects with attributes only it reads, like shards.py's TarFile note)."""
    owned = {m: set(re.findall(r"self\.(_[a-z]\w*)", p.read_text())) for m, p in MODULES.items()}
    offenders = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for target in targets:
                for t in ast.walk(target):
                    if (isinstance(t, ast.Attribute) and t.attr.startswith("_") and not t.attr.startswith("__")
                            and not (isinstance(t.value, ast.Name) and t.value.id in ("self", "cls"))
                            and any(t.attr in attrs for other, attrs in owned.items() if other != module)):
                        offenders.append(f"{module}:{t.lineno} .{t.attr}")
    assert not offenders, offenders


TEST_HOOKS = ("DALLE_CORE_TEST", "crash_point", "debug_record")


def test_the_library_holds_no_test_hooks():
    found = [f"{m}: {hook}" for m, p in MODULES.items() for hook in TEST_HOOKS if hook in p.read_text()]
    assert found == [f"dalle_core.training.config: debug_record"], found  # only its name, ignored in old runs


# --- one config per model ------------------------------------------------------------------------------------

TRAINERS = [(DiscreteVAE, VAETrainConfig, set()), (DALLE, DALLETrainConfig,
                                                   {"vae", "num_text_tokens", "sparse_attn", "optimize_for_inference"}),
            (CLIP, CLIPTrainConfig, {"num_text_tokens", "num_visual_tokens"}),
            (DiffusionPrior, PriorTrainConfig, {"dim_embed", "num_text_tokens", "text_seq_len"}),
            (Unet, DecoderTrainConfig, {"cond_dim", "channels"}), (Decoder, DecoderTrainConfig, {"unet", "image_size"})]
SPLIT = {DecoderTrainConfig: {Unet: {"cond_dim", "channels"}, Decoder: {"unet", "image_size"}}}  # two models' options


@pytest.mark.parametrize("model, config_class, filled_by_trainer", TRAINERS, ids=lambda v: getattr(v, "__name__", ""))
def test_every_model_keyword_is_documented_and_is_a_trainer_option_and_flag(model, config_class, filled_by_trainer):
    import argparse

    keywords = [p for p in list(inspect.signature(model.__init__).parameters)[1:]]
    docs = argument_docs(model)
    assert sorted(docs) == sorted(keywords), "the Args: section of the docstring names every keyword"
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, config_class)
    flags = {s for action in parser._actions for s in action.option_strings}
    for name in set(keywords) - filled_by_trainer:
        assert fields[name].metadata["model_kwarg"] and fields[name].metadata["help"] == docs[name]
        assert "--" + name.replace("_", "-") in flags
    if config_class not in SPLIT:
        assert set(config_class().model_kwargs()) == set(keywords) - filled_by_trainer
        return
    options = set()  # a config over two models holds both one's options and the other's, nothing else
    for cls, filled in SPLIT[config_class].items():
        options |= set(list(inspect.signature(cls.__init__).parameters)[1:]) - filled
    assert set(config_class().model_kwargs()) == options


def test_the_trainers_build_their_model_from_its_config_options():
    config = VAETrainConfig(image_size=32, num_layers=2, num_tokens=16, codebook_dim=8, hidden_dim=8,
                            num_resnet_blocks=0, diversity_gamma=2.0)
    config.validate()
    vae = DiscreteVAE(**config.model_kwargs())
    assert vae.config == {**DiscreteVAE(image_size=32).config, **{k: v for k, v in config.model_kwargs().items()
                                                                  if k != "normalization"}}
    with pytest.raises(ValueError, match="power of 2"):  # the constructor's own check, on the meta device
        VAETrainConfig(image_size=24).validate()
    with pytest.raises(TypeError, match="num_tokens must be a int"):
        VAETrainConfig(num_tokens="many").validate()


def test_a_run_saved_under_the_older_vae_option_names_reads_under_the_model_keywords(tmp_path):
    saved = config_to_dict(VAETrainConfig())
    saved["temp_start"], saved["kl_weight"] = saved.pop("temperature"), saved.pop("kl_div_loss_weight")
    saved["kl_weight"] = 0.25
    (tmp_path / "train_config.json").write_text(json.dumps({"config": saved}))
    config = load_config_file(VAETrainConfig, tmp_path / "train_config.json")
    assert config.kl_div_loss_weight == 0.25 and config.temperature == VAETrainConfig().temperature


def test_a_run_saved_with_the_removed_debug_record_option_still_reads(tmp_path):
    saved = {**config_to_dict(VAETrainConfig(steps=7)), "debug_record": True}  # now a trainer callback
    (tmp_path / "train_config.json").write_text(json.dumps({"config": saved}))
    loaded = load_config_file(VAETrainConfig, tmp_path / "train_config.json")
    assert config_to_dict(loaded) == config_to_dict(VAETrainConfig(steps=7))


# --- config recording ------------------------------------------------------------------------------------------


class WiderVAE(DiscreteVAE):
    """A researcher's subclass with a keyword of its own."""

    def __init__(self, *, width_factor: int = 2, **kwargs):
        super().__init__(hidden_dim=8 * width_factor, **kwargs)
        self.width_factor = width_factor


def test_a_subclass_records_its_own_arguments_and_reloads_from_them(tmp_path):
    vae = WiderVAE(width_factor=3, image_size=32, num_layers=2, num_tokens=16, codebook_dim=8)
    assert vae.config == {"width_factor": 3, "image_size": 32, "num_layers": 2, "num_tokens": 16, "codebook_dim": 8}
    vae.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["class"] == "DiscreteVAE"  # saved as its base
    loaded = WiderVAE.from_pretrained(tmp_path)
    assert type(loaded) is WiderVAE and loaded.width_factor == 3 and loaded.encoder[0][0].out_channels == 24
    assert torch.equal(loaded.codebook.weight, vae.codebook.weight)


def test_models_are_registered_and_module_arguments_rebuild_generically():
    from dalle_core import OpenAIDiscreteVAE

    from dalle_core.dalle2 import DALLE2

    expected = {"DiscreteVAE": DiscreteVAE, "DALLE": DALLE, "CLIP": CLIP, "OpenAIDiscreteVAE": OpenAIDiscreteVAE,
                "DiffusionPrior": DiffusionPrior, "Unet": Unet, "Decoder": Decoder, "DALLE2": DALLE2}
    assert {name: MODEL_CLASSES[name] for name in expected} == expected  # (and the image tokenizers added since)
    vae = DiscreteVAE(image_size=32, num_layers=2, num_tokens=16, codebook_dim=8, hidden_dim=8)
    dalle = DALLE(dim=32, vae=vae, num_text_tokens=20, text_seq_len=4, depth=1, heads=2, dim_head=16)
    assert "vae" not in dalle.config and DALLE.MODULE_ARGS == ("vae",)
    copy = build_like(dalle)
    assert type(copy) is DALLE and copy.config == dalle.config and copy.vae.config == vae.config
    assert copy.vae is not vae


# --- what the command line imports -------------------------------------------------------------------------------

IMPORT_PROBE = """
import json, sys
from dalle_core.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
after_help = sorted(m for m in sys.modules if m.split(".")[0] == "accelerate" or m.startswith("dalle_core.training"))
code = main(sys.argv[1:])
after_generate = sorted(m for m in sys.modules if m.split(".")[0] == "accelerate" or m.startswith("dalle_core.training"))
print(json.dumps({"code": code, "help": after_help, "generate": after_generate}))
"""


def test_generate_and_help_import_neither_accelerate_nor_the_trainers(tmp_path):
    import subprocess
    import sys

    from helpers import cli_env, make_vae

    dalle = DALLE(dim=32, vae=make_vae(), num_text_tokens=257, text_seq_len=8, depth=1, heads=2, dim_head=16)
    dalle.save_pretrained(tmp_path / "dalle")  # 257: the default byte tokenizer's vocabulary
    done = subprocess.run([sys.executable, "-c", IMPORT_PROBE, "generate", "a prompt", "--checkpoint",
                           str(tmp_path / "dalle"), "--num-images", "1", "--out", str(tmp_path / "out")],
                          env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and list((tmp_path / "out").glob("*/000.png"))
    assert report["help"] == [] and report["generate"] == []
