"""A stored patch PCA that would give wrong latents is refused at load, naming the file."""
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ldae.tokenizers.pca import PatchPCA
from ldae.tokenizers.registry import load_tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "pca.safetensors"
    PatchPCA.fit([torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1], patch_size=4).save(path)
    with safe_open(str(path), framework="pt") as f:
        return path, {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def _tamper(saved, tmp_path, **changes):
    _, tensors, meta = saved
    tensors = {k: v.clone() for k, v in tensors.items()}
    meta = dict(meta)
    for key, fn in changes.items():
        if key == "norm_std":
            meta["norm_std"] = json.dumps(fn)
        else:
            fn(tensors[key])
    out = tmp_path / "bad.safetensors"
    save_file(tensors, str(out), metadata=meta)
    return out


CASES = {
    "nan component": (dict(components=lambda t: t.__setitem__((0, 0), float("nan"))), "components holds NaN or infinite values"),
    "not orthonormal": (dict(components=lambda t: t.mul_(1.1)), "the components are not an orthonormal basis"),
    "negative eigenvalue": (dict(eigenvalues=lambda t: t.__setitem__(-1, -1.0)), "eigenvalues must be >= 0"),
    "unsorted eigenvalues": (dict(eigenvalues=lambda t: t.copy_(t.flip(0))), "eigenvalues must be in decreasing order"),
    "zero std": (dict(norm_std=[0.5, 0.0, 0.5]), r"norm_std must be positive and finite, got \[0.5, 0.0, 0.5\]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tokenizer_file_is_refused_by_both_loaders(saved, tmp_path, case):
    changes, message = CASES[case]
    bad = _tamper(saved, tmp_path, **changes)
    for load in (load_tokenizer, PatchPCA.load):
        with pytest.raises(ValueError, match=rf"^{bad}: {message}"):
            load(bad)


def test_good_file_loads_and_integer_tensors_are_refused(saved, tmp_path):
    path, tensors, meta = saved
    assert torch.equal(load_tokenizer(path).components, tensors["components"])
    save_file({**tensors, "mean": torch.zeros(48, dtype=torch.int64)}, str(tmp_path / "int.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="mean must be floating point, got torch.int64"):
        load_tokenizer(tmp_path / "int.safetensors")


@pytest.mark.parametrize("key, value, said", [
    ("patch_size", "abc", "invalid literal for int() with base 10: 'abc'"),
    ("in_chans", "1", "norm_mean/norm_std need 1 values"),
    ("norm_std", None, "missing metadata key 'norm_std'"),
])
def test_metadata_that_lies_is_refused_naming_the_file(tmp_path, key, value, said):
    src = Path(__file__).resolve().parent.parent / "weights" / "pca_p4_cifar10.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    bad = tmp_path / "lying.safetensors"
    save_file(load_file(src), bad, metadata=meta)
    with pytest.raises(ValueError, match=re.escape(f"{bad}: inconsistent tokenizer artifact (") + ".*" + re.escape(said)):
        load_tokenizer(bad)
