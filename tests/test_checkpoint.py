"""Pretraining checkpoints rebuild the model they hold, whatever its tokenizer."""
import argparse

import pytest
import torch

from ldae.cli.model_flags import add_model_args
from ldae.engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ldae.models.model_config import build_model
from ldae.tokenizers.linear_ae import PatchAE
from ldae.tokenizers.pca import PatchPCA

SIZE = "custom:img=16,patch=4,dim=32,enc=1,dec=1,heads=2,d=6"


def _args(*extra: str) -> argparse.Namespace:
    return add_model_args(argparse.ArgumentParser()).parse_args(["--model", SIZE, *extra])


def _images() -> torch.Tensor:
    return torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["pca", "ae"])
def test_round_trip_rebuilds_identical_model(tmp_path, kind):
    if kind == "pca":
        tok, args = PatchPCA.fit([_images()], patch_size=4), _args()
    else:  # Eq. 4's weights live on the PCA basis, so an AE tokenizer trains with tail weight 1
        tok, args = PatchAE.fit([_images()], patch_size=4, d=6, steps=5, batch_size=64), _args("--tail-weight", "1")
    torch.manual_seed(0)
    model = build_model(args, tok)
    for p in model.parameters():  # non-trivial weights, so equality means something
        torch.nn.init.normal_(p, std=0.05)
    path = tmp_path / "ckpt.pth"
    save_checkpoint(dict(model=model.state_dict(), ema=None, args=vars(args), tokenizer=tok.metadata(), step=3, epoch=1), path)
    back = model_from_checkpoint(path)
    assert type(back.tokenizer) is type(tok)
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    x = _images()[:2]
    torch.testing.assert_close(back(x, t=torch.tensor([5, 700]), generator=torch.Generator().manual_seed(1)),
                               model.eval()(x, t=torch.tensor([5, 700]), generator=torch.Generator().manual_seed(1)))


def test_refuses_foreign_and_truncated_files(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not an l-DAE checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
    good = tmp_path / "good.pth"
    save_checkpoint(dict(model={"w": torch.zeros(1000)}, args={}, step=0, epoch=0), good)
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:500])
    with pytest.raises(ValueError, match="not a readable l-DAE checkpoint"):
        load_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_args_asking_for_another_size_are_refused_before_any_allocation(tmp_path, monkeypatch):
    tok = PatchPCA.fit([_images()], patch_size=4)
    model = build_model(_args(), tok)
    huge = "custom:img=16,patch=4,dim=8192,enc=24,dec=24,heads=32,d=6"  # 39B parameters: 150 GiB in float32
    path = tmp_path / "small_weights_huge_args.pth"
    save_checkpoint(dict(model=model.state_dict(), ema=None, args={**vars(_args()), "model": huge}, tokenizer=tok.metadata(),
                         step=0, epoch=0), path)
    assert path.stat().st_size < 2_000_000
    real_build = build_model
    sizes = []

    def build_and_record(args, tokenizer):  # only skeletons on the meta device may be built for the huge size
        m = real_build(args, tokenizer)
        sizes.append(next(m.parameters()).device.type)
        return m

    monkeypatch.setattr("ldae.engine.checkpoint.build_model", build_and_record)
    with pytest.raises(ValueError, match=rf"{path}: its model args \('custom:img=16,patch=4,dim=8192.*do not describe its weights "
                                         r"\(.*args give \(1, 16, 8192\), weights hold \(1, 16, 32\)"):
        model_from_checkpoint(path)
    assert sizes == ["meta"]
    wrong = dict(model.state_dict())
    wrong.pop("blocks.0.attn.qkv.weight")
    save_checkpoint(dict(model=wrong, ema=None, args=vars(_args()), tokenizer=tok.metadata(), step=0, epoch=0), path)
    with pytest.raises(ValueError, match=r"missing \['blocks.0.attn.qkv.weight'\]"):
        model_from_checkpoint(path)
