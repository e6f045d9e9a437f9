"""Packaging habits: the version flag, type hints shipped, the declared licence and dependencies, progress bars."""
from __future__ import annotations

import tomllib
from pathlib import Path

from PIL import Image

import dalle_core
from dalle_core.cli import main
from dalle_core.data import write_shards
from helpers import captions, make_dalle

REPO = Path(__file__).resolve().parent.parent


def test_version_flag_prints_the_one_version(capsys):
    try:
        main(["--version"])
    except SystemExit as done:
        assert done.code == 0
    assert capsys.readouterr().out.strip() == f"dalle-core {dalle_core.__version__}"


def test_pyproject_declares_an_spdx_licence_typed_package_and_what_the_code_imports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    deps = " ".join(project["project"]["dependencies"])
    assert "pillow>=9.1" in deps and "numpy" in deps
    assert (REPO / "dalle_core" / "py.typed").is_file()
    # and in the package this test imports (the installed wheel, when CI runs the suite against it)
    assert (Path(dalle_core.__file__).parent / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["dalle_core"]


def test_generate_images_and_write_shards_show_progress_bars_when_asked(capsys, tmp_path):
    dalle = make_dalle(depth=1)
    dalle.generate_images(captions(), use_cache=True, progress=True)
    assert "generate_images" in capsys.readouterr().err
    dalle.generate_images(captions(), use_cache=True)
    assert "generate_images" not in capsys.readouterr().err
    pairs = [("a caption", Image.new("RGB", (8, 8)))] * 3
    write_shards(pairs, tmp_path, progress=True)
    assert "write_shards" in capsys.readouterr().err


def test_library_messages_go_through_the_dalle_core_logger_not_print(caplog):
    import ast
    import logging

    from dalle_core.utils import main_process_log

    allowed = {"cli.py", "cli_generate.py", "runner.py", "demo.py", "__main__.py"}  # the commands' own output
    for path in (REPO / "dalle_core").rglob("*.py"):
        if path.name in allowed:
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and ((isinstance(n.func, ast.Name) and n.func.id == "print")
                      or (isinstance(n.func, ast.Attribute) and n.func.attr == "print"))]
        assert not calls, f"{path.relative_to(REPO)} prints at line {calls[0].lineno}"
    with caplog.at_level(logging.INFO, logger="dalle_core"):
        main_process_log(None, "resumed from here")
    assert caplog.records[-1].name == "dalle_core" and caplog.records[-1].getMessage() == "resumed from here"


def test_the_sdist_holds_the_library_and_not_the_tests(tmp_path):
    import subprocess
    import sys
    import tarfile

    setuptools = __import__("setuptools")
    major = int(setuptools.__version__.split(".")[0])
    if major < 77:
        import pytest

        pytest.skip(f"setuptools {setuptools.__version__} predates licence expressions (>= 77 builds the sdist)")
    script = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        tops = {member.split("/")[1] for member in sdist.getnames() if member.count("/") >= 1}
        assert "dalle_core" in tops and "tests" not in tops and "benchmarks" not in tops
        assert any(member.endswith("dalle_core/py.typed") for member in sdist.getnames())
