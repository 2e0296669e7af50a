"""The README stays true: its model tables are the manifest's, and its core example runs."""
import os
import re
import subprocess
import sys
from pathlib import Path

from ldae.release.model_tables import render

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start : nxt if nxt >= 0 else len(text)]


def test_model_tables_match_the_manifest():
    text = README.read_text()
    block = re.search(r"<!-- model-table:start -->\n(.*?)\n<!-- model-table:end -->", text, re.S)
    assert block, "README lost its model-table markers"
    assert block.group(1).strip() == render().strip(), "README model tables are stale: run python -m ldae.release.model_tables"


def test_core_example_runs_as_written(cifar_root, tmp_path):
    code = re.search(r"```python\n(.*?)```", _section(README.read_text(), "## The library in one example"), re.S).group(1)
    import tarfile

    # The example reads ../shared/data/cifar10-jpeg.tar.gz as a checkout does: here a small archive of the
    # same layout (200 train images), so the test stays fast.
    (tmp_path / "shared" / "data").mkdir(parents=True)
    with tarfile.open(tmp_path / "shared" / "data" / "cifar10-jpeg.tar.gz", "w:gz") as tf:
        tf.add(cifar_root / "cifar10-jpeg" / "train", arcname="cifar10-jpeg/train")
    work = tmp_path / "work"
    work.mkdir()
    script = work / "example.py"
    script.write_text(code)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "pca_p4.safetensors").is_file()
    assert (work / "my_ldae" / "model.safetensors").is_file()


def test_quoted_variance_of_the_shipped_tokenizer():
    # README quotes what `ldae fit-pca` printed for the shipped 16x16 PCA; it must stay true of the artifact.
    import ldae

    e = ldae.get_tokenizer("ldae_vit_base").eigenvalues.double()
    explained = {d: round(float(e[:d].sum() / e.sum()) * 100, 1) for d in (8, 16, 32)}
    assert explained == {8: 90.4, 16: 93.6, 32: 96.0}
    assert "90.4% at\nd = 8, 93.6% at 16, 96.0% at 32" in README.read_text()


def _bench_module(name: str):
    import importlib.util

    path = README.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _block(name: str) -> str:
    block = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", README.read_text(), re.S)
    assert block, f"README lost its {name} markers"
    return block.group(1).strip()


def test_cpu_table_is_the_committed_benchmark():
    import json

    report = json.loads((README.parent / "bench" / "results" / "pretrain_cpu.json").read_text())
    assert not report["smoke"] and len(report["results"]) >= 3
    assert _block("cpu-table") == _bench_module("bench_cpu").readme_table(report)
    assert report["compile"] and _block("cpu-compile-table") == _bench_module("bench_cpu").compile_table(report)


def test_trained_weights_table_is_the_committed_run():
    import json

    import ldae

    record = json.loads((README.parent / "bench" / "results" / "cifar10_micro_cpu.json").read_text())
    assert _block("cifar10-results") == _bench_module("collect_pretrain_results").readme_table(record)
    # The card's and manifest's metrics are the same measurement.
    entry = ldae.release.manifest.load_manifest().weights["ldae_vit_micro_patch4_32.cifar10"]
    assert entry.metrics["cached_probe_top1"] == record["curve"][-1]["probe_top1"]


def test_claims_table_is_the_committed_sweep():
    import json

    record = json.loads((README.parent / "bench" / "results" / "claims_cifar10_cpu.json").read_text())
    sweep = _bench_module("sweep_claims")
    done = [r["name"] for r in record["rows"]]
    assert sorted(done + record["not_run"]) == sorted(r.name for r in sweep.rows_for(8, 16))  # every row, one run
    assert all(r.train for r in sweep.rows_for(8, 16) if r.name in record["not_run"])  # only --max-minutes leaves rows out
    assert record["command"].startswith("python bench/sweep_claims.py") and "--rows" not in record["command"]
    trained = {r["images_seen"] for r in record["rows"] if r["name"] != "random_init"}
    assert len(trained) == 1  # equal budget
    assert _block("claims-table") == sweep.readme_table(record)


def _prose(text: str) -> str:
    """The README without fenced code blocks (commands and verbatim program output)."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def _numbers(obj) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return []


def test_every_quoted_time_is_a_committed_measurement():
    import json

    values = [x for p in sorted((README.parent / "bench" / "results").glob("*.json")) for x in _numbers(json.loads(p.read_text()))]
    quotes = re.findall(r"(\d+(?:\.\d+)?) ?(s|min|minutes)\b", _prose(README.read_text()))
    assert quotes, "the README quotes no times?"
    for number, unit in quotes:
        digits = len(number.split(".")[1]) if "." in number else 0
        q = float(number)
        as_seconds = [round(v, digits) for v in values] + [round(v * 60, digits) for v in values]
        as_minutes = [round(v, digits) for v in values] + [round(v / 60, digits) for v in values]
        assert q in (as_seconds if unit == "s" else as_minutes), f"README quotes {number} {unit}: not in any bench/results JSON"


def test_every_named_tag_exists():
    import ldae

    tags = set(ldae.release.manifest.load_manifest().weights)
    root = README.parent
    texts = [README.read_text(), *(p.read_text() for p in sorted((root / "examples").glob("*.py"))),
             (root / "ldae" / "cli" / "command.py").read_text(), (root / "ldae" / "cli" / "figures.py").read_text()]
    named = {m for t in texts for m in re.findall(r"\bldae_vit_[a-z0-9_]+\.[a-z0-9_]+\b", t) if not m.endswith(".untrained")}
    assert named and named <= tags, f"named but not released: {sorted(named - tags)}"
