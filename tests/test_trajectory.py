"""Every row of the paper's trajectory (docs/trajectory.md) builds from its flags, trains, and exports.

The table in docs/trajectory.md is the source: each row with flags is built on a tiny 32 px model
with the paper's 16 x 16 patches (so every documented d and pixel token size applies verbatim),
with a tokenizer of the documented kind, for each d of the row.
"""
import argparse
import re
from pathlib import Path

import pytest
import torch

from ldae.cli.model_flags import add_model_args
from ldae.models.export import export_to_timm
from ldae.models.ldae import LDAE
from ldae.models.model_config import MODEL_ARG_NAMES, MODEL_FIELDS, TRAJECTORY_ARG_DEFAULTS, ModelConfig, build_model
from ldae.tokenizers.linear_ae import PatchAE, PatchVAE
from ldae.tokenizers.pca import PatchPCA
from ldae.tokenizers.pixel import PixelTokenizer

DOC = Path(__file__).resolve().parent.parent / "docs" / "trajectory.md"
TINY = "custom:img=32,patch=16,dim=32,enc=1,dec=1,heads=2"


def _doc_rows() -> list[tuple[str, str, int | None, int | None, list[str]]]:
    """(row name, tokenizer kind, d, pixel token patch, model flags) for every documented row with flags."""
    text = DOC.read_text()
    table = text[text.index("## Paper row -> flags"):].split("\n## ")[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 4 or cells[0] in ("paper row", "---") or cells[3] == "-":
            continue
        name, acc, tok, flags = cells
        kind = "pca" if "fit-pca" in tok else re.search(r"--kind (\w+)", tok).group(1)
        q = re.search(r"--token-patch (\d+)", tok)
        ds = [int(v) for v in re.findall(r"(\d+):", acc)] or [None]
        for d in ds:
            argv = flags.replace("`", "").replace(" D", f" {d}").split()
            rows.append((f"{name} [d={d}]", kind, d, int(q.group(1)) if q else None, argv))
    return rows


ROWS = _doc_rows()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_doc_table_lists_every_trajectory_row():
    names = {r[0].split(" [")[0] for r in ROWS}
    assert len(ROWS) == 4 + 4 + 5 + 4 + 6 + 1  # VAE, AE, PCA d values; 4 pixel sizes; Tab. 3; single level
    assert {f"Tab. 3 row {i}" for i in range(1, 7)} <= {n.split(":")[0] for n in names}
    # The last row of Tab. 3 is the default model: its documented flags equal the defaults.
    final = next(r for r in ROWS if r[0].startswith("Tab. 3 row 6"))
    parser = add_model_args(argparse.ArgumentParser())
    assert vars(parser.parse_args(final[4])) == {**vars(parser.parse_args([])), "d": 32}


_TOKENIZERS: dict = {}


def _tokenizer(kind: str, d: int | None, q: int | None):
    key = (kind, d if kind in ("ae", "vae") else None, q)  # a PCA serves every d
    if key not in _TOKENIZERS:
        g = torch.Generator().manual_seed(0)
        images = torch.rand(64, 3, 32, 32, generator=g) * 2 - 1  # 256 patches of 16x16x3: rank enough for d <= 128
        if kind == "pca":
            _TOKENIZERS[key] = PatchPCA.fit([images], 16)
        elif kind in ("ae", "vae"):
            cls = PatchVAE if kind == "vae" else PatchAE
            _TOKENIZERS[key] = cls.fit([images], 16, d, steps=3, batch_size=64)
        else:
            _TOKENIZERS[key] = PixelTokenizer(16, q)
    return _TOKENIZERS[key]


def _build(argv: list[str], tok) -> LDAE:
    args = add_model_args(argparse.ArgumentParser()).parse_args(argv)
    args.model = TINY
    return build_model(args, tok)


@pytest.mark.parametrize("name,kind,d,q,argv", ROWS, ids=[r[0] for r in ROWS])
def test_row_trains_and_exports(name, kind, d, q, argv):
    torch.manual_seed(0)
    tok = _tokenizer(kind, d, q)
    model = _build(argv, tok)
    if d is not None:
        assert model.d == d
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1

    # One AdamW step (pretraining's optimizer) on a fixed draw of t and noise lowers that draw's loss.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    loss = model(images, generator=torch.Generator().manual_seed(2))
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    opt.step()
    with torch.no_grad():
        after = model(images, generator=torch.Generator().manual_seed(2))
    assert after < loss

    # At a fixed t the encoder exports to a plain timm ViT on images, the tokenizer folded in for latent input.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "adaLN_modulation" in pname or "final_layer" in pname:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(3))
        vit = export_to_timm(model)
        torch.testing.assert_close(vit(images), model.forward_features(images), atol=2e-5, rtol=1e-4)
        assert not any(n.startswith("noise.") for n, _ in vit.named_parameters())


def test_latent_input_model_encodes_images_through_its_tokenizer():
    tok = _tokenizer("pca", 32, None)
    model = _build("--input-space latent --target eps --schedule linear_gamma2 --d 32".split(), tok)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    z = tok.encode(images, 32, whiten=True)  # (B, N, d): the noise's (whitened) coordinates
    with torch.no_grad():
        torch.testing.assert_close(model.forward_encoder(images, 10), model.forward_encoder(z, 10))
    out = model(images, return_dict=True)
    assert out.x_t.shape == (2, 4, 32) and out.pred.shape == (2, 4, 32)  # (B, N, d) tokens in and out
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\) or tokens \(B, 4, 32\), got \(2, 4, 31\)"):
        model.forward_encoder(z[..., :31], 10)


def test_eps_model_denoises_back_to_the_image_at_its_own_noise():
    """denoise() of an eps model inverts z_t = gamma z0 + sigma eps when the prediction is the drawn eps."""
    tok = _tokenizer("pca", 32, None)
    model = _build("--input-space latent --target eps --schedule linear_gamma2 --d 32".split(), tok)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    noisy = model.corrupt(images, 500, generator=torch.Generator().manual_seed(0))
    model._denoise = lambda x_t, t: noisy.eps  # an oracle network
    torch.testing.assert_close(model.denoise(noisy.x_t, 500), tok.project(images, 32), atol=1e-4, rtol=1e-4)


def test_older_saved_args_rebuild_the_default_model():
    parser = add_model_args(argparse.ArgumentParser())
    args = parser.parse_args([])
    assert {k: getattr(args, k) for k in TRAJECTORY_ARG_DEFAULTS} == TRAJECTORY_ARG_DEFAULTS
    for k in TRAJECTORY_ARG_DEFAULTS:
        delattr(args, k)  # args saved before the trajectory flags existed
    args.model = TINY
    tok = _tokenizer("pca", 32, None)
    torch.manual_seed(0)
    old = build_model(args, tok)
    torch.manual_seed(0)
    new = LDAE(TINY, tok)
    assert (old.input_space, old.target) == ("image", "image")
    for (k, v), (k2, v2) in zip(old.state_dict().items(), new.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_saved_args_missing_a_model_field_are_refused():
    """Only the fields added later may be absent; a default for any other would build another model."""
    saved = ModelConfig(model=TINY).to_dict()
    assert set(MODEL_FIELDS) == set(saved) and set(MODEL_ARG_NAMES) == set(MODEL_FIELDS) - set(TRAJECTORY_ARG_DEFAULTS)
    assert {k: saved[k] for k in TRAJECTORY_ARG_DEFAULTS} == TRAJECTORY_ARG_DEFAULTS  # the dataclass defaults
    del saved["tail_weight"]
    with pytest.raises(ValueError, match=r"saved args lack the model flags \['tail_weight'\]"):
        build_model(saved, None)


def test_pretrain_exposes_the_switches():
    pretrain = pytest.importorskip("ldae.cli.pretrain")
    argv = "--input-space latent --target z0 --schedule linear_gamma2 --d 16".split()
    args = pretrain.get_args_parser().parse_args(["--data", "x", "--tokenizer", "t.safetensors", *argv])
    assert (args.input_space, args.target, args.schedule, args.d) == ("latent", "z0", "linear_gamma2", 16)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(target="z0", noise_space="pixel"), r"target 'z0' is defined on a tokenizer's latents: it needs noise_space='latent'"),
        (dict(input_space="latent", noise_space="pixel", target="image"), r"pixel-space noise is the classical DAE on images"),
        (dict(target="x0"), r"prediction target must be one of \('image', 'decoded', 'z0', 'eps'\), got 'x0'"),
        (dict(input_space="tokens"), r"input space must be one of \('image', 'latent'\), got 'tokens'"),
    ],
)
def test_invalid_switch_combinations_fail_before_any_work(kwargs, match):
    tok = None if kwargs.get("noise_space") == "pixel" else _tokenizer("pca", 32, None)
    with pytest.raises(ValueError, match=match):
        LDAE(TINY, tok, **kwargs)


def test_eq4_target_needs_the_pca_basis():
    tok = _tokenizer("ae", 32, None)
    with pytest.raises(ValueError, match=r"Eq. 4, whose weights are defined on the PCA basis; with a PatchAE tokenizer pass tail_weight=1"):
        LDAE(TINY, tok)
    model = LDAE(TINY, tok, tail_weight=1.0)  # the unweighted image loss is defined for any tokenizer
    assert model.d == 32  # the AE's own latent dimension is the default
    with pytest.raises(ValueError, match=r"this patch AE was trained for latent dimension d=32, got d=16"):
        LDAE(TINY, tok, d=16, tail_weight=1.0)
