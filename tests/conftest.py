"""Shared test fixtures: reference (dalle-pytorch 1.6.6) parity cases, committed and live."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch

TESTS_DIR = Path(__file__).parent
FIXTURE_DIR = TESTS_DIR / "fixtures"
MAKE_FIXTURES = TESTS_DIR / "reference" / "make_fixtures.py"
LIVE_SEED = 20260


def peer_python() -> Optional[str]:
    """The Python of a venv with dalle-pytorch 1.6.6, from DALLE_CORE_PEER_PYTHON, if set and present."""
    path = os.environ.get("DALLE_CORE_PEER_PYTHON")
    return path if path and Path(path).exists() else None


def load_case(path: Path) -> dict:
    """Load one parity case without unpickling code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def committed_cases(prefix: str) -> Dict[str, Path]:
    """Committed fixture files whose name starts with `prefix`, by name."""
    return {p.stem: p for p in sorted(FIXTURE_DIR.glob(f"{prefix}*.pt"))}


@pytest.fixture(scope="session")
def live_fixture_dir(tmp_path_factory) -> Path:
    """Fresh parity cases built by the live reference with a new seed (skips when it is not installed)."""
    python = peer_python()
    if python is None:
        pytest.skip("live reference not available: set DALLE_CORE_PEER_PYTHON to a dalle-pytorch 1.6.6 venv python")
    out = tmp_path_factory.mktemp("live_reference")
    subprocess.run([python, str(MAKE_FIXTURES), str(out), "--seed", str(LIVE_SEED)], check=True,
                   capture_output=True, text=True)
    return out


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


sys.path.insert(0, str(TESTS_DIR))
