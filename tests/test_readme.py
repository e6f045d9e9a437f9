"""The README's API tour runs as written, and its demo numbers are the committed run's."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_api_tour_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["images"].shape == (4, 3, 64, 64)
    assert namespace["scores"].shape == (4,)
    assert namespace["tokens"].shape == (1, 64)


def test_readme_demo_table_is_the_committed_demo_summary():
    """The demo's scores in the README are those of docs/demo/summary.json, the run its pictures come from."""
    import json

    summary = json.loads((README.parent / "docs" / "demo" / "summary.json").read_text())
    config = summary["config"]
    rows = {"plain sampling": "plain", f"guidance, cond_scale {config['cond_scale']:g}": "guided",
            "CLIP reranking, best of 4": "clip_best_of_4", "guidance + CLIP best of 4": "guided_clip_best_of_4"}
    text = README.read_text()
    for label, setting in rows.items():
        line = re.search(rf"^\| {re.escape(label)} \|(.*)\|$", text, flags=re.M)
        assert line, f"no README row for {label!r}"
        shown = [float(v.strip().rstrip("%")) for v in line.group(1).split("|")]
        seen, held = summary["results"]["seen"][setting], summary["results"]["heldout"][setting]
        expected = [seen["colour_and_shape"], seen["all_attributes"], held["colour_and_shape"], held["all_attributes"]]
        assert shown == [round(100 * v, 1) for v in expected], label
    assert f"Plain samples stay varied: {summary['dalle']['distinct_samples']:.0%} of" in text
    assert f"cond_scale {config['cond_scale']:g}" in text and f"temperature {config['temperature']:g}" in text
