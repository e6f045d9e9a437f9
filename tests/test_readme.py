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


def test_readme_real_data_tables_are_the_committed_benchmark_results():
    """Every row of the README's "Learning on real data" tables is the benchmark's own table of a committed
    results file in benchmarks/real_data/ (named on a "Table: [...](benchmarks/real_data/NAME.md)" line)."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("real_data", README.parent / "benchmarks" / "real_data.py")
    real_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_data)  # imports torch and the standard library only
    text = README.read_text()
    section = text.split("## Learning on real data", 1)[1].split("\n## ", 1)[0]
    sources = re.findall(r"Table: \[[^\]]*\]\(benchmarks/real_data/(\w+)\.md\)", section)
    assert sources, "the section names no committed results"
    for name in sources:
        runs = json.loads((README.parent / "benchmarks" / "real_data" / f"{name}.json").read_text())["runs"]
        for line in real_data.table(runs).splitlines()[2:]:
            assert line in section, f"README lacks the row {line!r} of benchmarks/real_data/{name}.json"


def test_readme_sampling_tables_are_the_committed_benchmark_results():
    """The "Sampling" section's numbers are those of docs/sampling/sampling_features.json."""
    import json

    result = json.loads((README.parent / "docs" / "sampling" / "sampling_features.json").read_text())
    section = README.read_text().split("## Sampling", 1)[1].split("\n## ", 1)[0]
    rerank = {"the first one (no reranking)": "plain (first candidate)", "by CLIP": "CLIP best of 4",
              "by the DALLE's likelihood": "likelihood best of 4", "by both ranks": "both ranks, best of 4"}
    for label, key in rerank.items():
        seen, held = result["rerank"]["seen"][key], result["rerank"]["heldout"][key]
        assert f"| {label} | {seen:.1%} | {held:.1%} |" in section, label
    inpaint = result["inpaint"]
    for half in ("bottom", "top"):
        row = f"{half} half regenerated"
        assert f"{inpaint['seen'][row]:.1%} / {inpaint['heldout'][row]:.1%}" in section, half
    demo = result["speculative"]["demo"]
    for batch, sampler, label in [("batch 1", "plain cached", "plain, cached"), ("batch 1", "speculative k=4", None),
                                  ("batch 1", "speculative k=8", None), ("batch 16", "plain cached", "plain, cached"),
                                  ("batch 16", "speculative k=4", None), ("batch 16", "speculative k=8", None)]:
        row = demo[batch][sampler]
        ms = row["seconds_per_image"] * 1000
        shown = f"{ms:.0f}" if batch == "batch 1" else f"{ms:.1f}"
        passes = f"{row['passes_per_image']:.0f}" if sampler == "plain cached" else f"{row['passes_per_image']:.1f}"
        line = f"| {label or sampler} | {batch.split()[1]} | {passes} | {shown} | {row['accuracy']:.1%} |"
        assert line in section, line


def test_readme_guidance_tables_are_the_committed_benchmark_results():
    """The "Guidance: logits or probabilities" numbers are those of the two docs/sampling/guidance results it names
    (the shapes demo) and of the committed real_data_sampling results it names (the digits)."""
    import json

    section = README.read_text().split("### Guidance: logits or probabilities", 1)[1].split("\n## ", 1)[0]
    shape_runs = set(re.findall(r"\]\((docs/sampling/guidance/[\w./-]*guidance_space)\.md\)", section))
    assert len(shape_runs) == 2, shape_runs
    for name in shape_runs:
        shapes = json.loads((README.parent / f"{name}.json").read_text())
        rows = {(r["space"], r["cond_scale"]): r for r in shapes["rows"]}
        none = rows.pop(("none", 1.0))
        assert f"unguided: {none['seen']:.1%} / {none['heldout']:.1%}" in section, name
        for space in ("probs", "logits"):
            cells = [f"{r['seen']:.1%} / {r['heldout']:.1%}" for (s, _), r in sorted(rows.items()) if s == space]
            assert f", on {space} | " + " | ".join(cells) + " |" in section, (name, space)
    sources = re.findall(r"Table: \[[^\]]*\]\(benchmarks/real_data/(\w+)\.md\)", section)
    assert sources, "the section names no committed digits results"
    for name in sources:
        table = (README.parent / "benchmarks" / "real_data" / f"{name}.md").read_text().split("\n\n", 1)[1]
        for line in table.strip().splitlines()[2:]:
            assert line in section, f"README lacks the row {line!r} of benchmarks/real_data/{name}.md"
