"""The README stays true: its model tables are the manifest's, and its core example runs."""
import os
import re
import subprocess
import sys
from pathlib import Path

from ldae.model_table import render

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = text.find("\n## ", start + len(heading))
    return text[start : nxt if nxt >= 0 else len(text)]


def test_model_tables_match_the_manifest():
    text = README.read_text()
    block = re.search(r"<!-- model-table:start -->\n(.*?)\n<!-- model-table:end -->", text, re.S)
    assert block, "README lost its model-table markers"
    assert block.group(1).strip() == render().strip(), "README model tables are stale: run python -m ldae.model_table"


def test_core_example_runs_as_written(cifar_root, tmp_path):
    code = re.search(r"```python\n(.*?)```", _section(README.read_text(), "## The library in one example"), re.S).group(1)
    script = tmp_path / "example.py"
    script.write_text(code)
    (tmp_path / "cifar10-jpeg").symlink_to(cifar_root / "cifar10-jpeg")  # the example reads ./cifar10-jpeg
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "pca_p4.safetensors").is_file()
    assert (tmp_path / "my_ldae" / "model.safetensors").is_file()


def test_quoted_variance_of_the_shipped_tokenizer():
    # README quotes what `ldae fit-pca` printed for the shipped 16x16 PCA; it must stay true of the artifact.
    import ldae

    e = ldae.get_tokenizer("ldae_vit_base").eigenvalues.double()
    explained = {d: round(float(e[:d].sum() / e.sum()) * 100, 1) for d in (8, 16, 32)}
    assert explained == {8: 90.4, 16: 93.6, 32: 96.0}
    assert "90.4% at\nd = 8, 93.6% at 16, 96.0% at 32" in README.read_text()
