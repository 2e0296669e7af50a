"""torch.hub: hubconf.py at the repository root, offline (local source and a $TORCH_HOME/hub cache layout)."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import timm
import torch

import ldae
import ldae.models.hub

REPO = Path(__file__).resolve().parent.parent
ARCHS = sorted(timm.list_models("ldae*"))


def test_hubconf_only_imports_and_declares_dependencies():
    tree = ast.parse((REPO / "hubconf.py").read_text())
    body = tree.body[1:] if isinstance(tree.body[0], ast.Expr) else tree.body  # after the docstring
    assert all(isinstance(n, (ast.Import, ast.ImportFrom, ast.Assign)) for n in body)
    deps = next(n for n in body if isinstance(n, ast.Assign) and n.targets[0].id == "dependencies")
    assert {"torch", "timm"} <= set(ast.literal_eval(deps.value))


def test_local_load_matches_timm_and_passes_kwargs():
    torch.manual_seed(0)
    m = torch.hub.load(str(REPO), "ldae_vit_tiny_patch4_32", source="local", depth=2, num_classes=3)
    torch.manual_seed(0)
    ref = timm.create_model("ldae_vit_tiny_patch4_32", depth=2, num_classes=3)
    x = torch.randn(2, 3, 32, 32)
    assert type(m) is type(ref) and len(m.blocks) == 2
    assert torch.equal(m(x), ref(x))
    feats = torch.hub.load(str(REPO), "ldae_vit_base", source="local", depth=2, img_size=32, features_only=True, out_indices=(1,))
    assert [f.shape for f in feats(torch.randn(1, 3, 32, 32))] == [(1, 768, 2, 2)]


def test_entrypoints_are_keyword_only_and_fail_fast_without_weights():
    with pytest.raises(TypeError):
        torch.hub.load(str(REPO), "ldae_vit_base", True, source="local")
    with pytest.raises(RuntimeError, match=re.escape("No pretrained weights ship for ldae_vit_large.")):
        torch.hub.load(str(REPO), "ldae_vit_large", source="local", pretrained=True)


def test_list_and_help_through_the_hub_cache_layout(tmp_path, monkeypatch):
    """torch.hub.list/help have no local source: place the repo where a GitHub download would land."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    hub = Path(torch.hub.get_dir())
    assert hub == tmp_path / "hub"
    hub.mkdir()
    (hub / "ldae-org_ldae_main").symlink_to(REPO, target_is_directory=True)
    sys_path = list(sys.path)
    try:
        names = torch.hub.list("ldae-org/ldae:main", trust_repo=True, skip_validation=True, verbose=False)
        doc = torch.hub.help("ldae-org/ldae:main", "ldae_vit_base", trust_repo=True, skip_validation=True)
    finally:
        sys.path[:] = sys_path
    assert sorted(names) == ARCHS
    assert doc == "l-DAE ViT-B/16 encoder, 256 px: 12 blocks x 768 (paper Tab. 4)."
    for name in ARCHS:
        fn = getattr(ldae.models.hub, name)
        assert fn.__doc__ and "\n" not in fn.__doc__.strip() and fn.__name__ == name
