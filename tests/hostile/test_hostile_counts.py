"""The hostile test files state in their docstrings how many cases they hold; this keeps those numbers true.

1 case.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def test_each_hostile_file_states_its_true_number_of_cases():
    listing = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                              str(HERE.relative_to(ROOT))], capture_output=True, text=True, cwd=ROOT, check=True)
    collected = Counter(Path(line.split("::")[0]).name for line in listing.stdout.splitlines() if "::" in line)
    stated = {}
    for path in sorted(HERE.glob("test_*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        found = re.search(r"(\d+) (?:test )?cases?\b", doc)
        assert found is not None, f"{path.name}: its docstring does not say how many cases it holds"
        stated[path.name] = int(found.group(1))
    assert stated == dict(collected)
