"""k-NN classifier: a hand-computed vote, invariances, errors, ``ldae knn`` end to end, and the two-process
feature gather and accuracy reduction every recipe relies on."""
import json
import math
import os
import socket

import pytest
import timm
import torch
import torch.multiprocessing as mp
from _recipe_helpers import tiny_checkpoint

from ldae.cli.knn import get_args_parser, main
from ldae.engine import dist
from ldae.engine.finetune_loop import evaluate
from ldae.eval.features import FeatureExtractor, extract_features
from ldae.eval.knn import knn_classify, knn_evaluate, knn_scores


def test_hand_computed_vote():
    # Unit vectors at angles 0, 60, 90, 180 degrees; the query at 30 degrees.
    ang = torch.tensor([0.0, 60.0, 90.0, 180.0]) * math.pi / 180
    train = torch.stack([ang.cos(), ang.sin()], 1) * torch.tensor([[2.0], [0.5], [3.0], [1.0]])  # norms must not matter
    labels = torch.tensor([0, 1, 1, 2])
    q = torch.tensor([[math.cos(math.pi / 6), math.sin(math.pi / 6)]]) * 7.0
    T = 0.5
    # cos(30) for 0 deg and 60 deg (labels 0 and 1), cos(60) for 90 deg (label 1), cos(150) for 180 deg.
    c30, c60 = math.cos(math.pi / 6), 0.5
    scores = knn_scores(train, labels, q, k=3, T=T, num_classes=3)
    expected = torch.tensor([[math.exp(c30 / T), math.exp(c30 / T) + math.exp(c60 / T), 0.0]])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert knn_classify(train, labels, q, k=3, T=T).tolist() == [1]  # two votes beat the one equally close
    # k = 4 adds the opposite vector's vote exp(cos(150 deg) / T) to class 2.
    s4 = knn_scores(train, labels, q, k=4, T=T, num_classes=3)
    assert math.isclose(float(s4[0, 2]), math.exp(-c30 / T), rel_tol=1e-5)


def test_chunking_and_device_invariance():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    labels = torch.randint(0, 7, (300,), generator=g)
    full = knn_scores(train, labels, test, k=20, num_classes=7)  # votes up to exp(1 / 0.07) ~ 1.6e6: relative tolerance
    torch.testing.assert_close(knn_scores(train, labels, test, k=20, num_classes=7, chunk_size=7), full, rtol=1e-5, atol=0)
    # Cosine similarity: per-sample positive scaling of either side changes nothing.
    s = torch.rand(300, 1, generator=g) + 0.1
    torch.testing.assert_close(knn_scores(train * s, labels, test * 3, k=20, num_classes=7), full, rtol=1e-5, atol=0)


def test_evaluate_top1_top5():
    # Two well-separated clusters per class, so k=5 is perfect; top-5 with 3 classes is always 100.
    g = torch.Generator().manual_seed(1)
    centers = torch.eye(8)[:3] * 10
    y = torch.arange(3).repeat_interleave(20)
    train = centers[y] + torch.randn(60, 8, generator=g)
    test = centers[y] + torch.randn(60, 8, generator=g)
    acc = knn_evaluate(train, y, test, y, ks=(5, 60))
    assert acc[5] == {"top1": 100.0, "top5": 100.0}
    assert set(acc) == {5, 60}


def test_errors_name_the_problem():
    train, labels = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match=r"k must be in \[1, 10\] \(the number of training features\), got 20"):
        knn_scores(train, labels, torch.randn(2, 4), k=20)
    with pytest.raises(ValueError, match=r"expected train features \(N, D\) and test features \(M, D\)"):
        knn_scores(train, labels, torch.randn(2, 5), k=2)
    with pytest.raises(ValueError, match=r"expected test labels \(2,\)"):
        knn_evaluate(train, labels, torch.randn(2, 4), torch.zeros(3, dtype=torch.long), ks=(2,))


def test_cli_end_to_end_with_cache(cifar_root, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    argv = ["--model", str(ckpt), "--data", str(cifar_root), "--k", "5", "20", "--num-workers", "0",
            "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert main(get_args_parser().parse_args(argv)) == 0
    res = json.loads((tmp_path / "out" / "knn_results.json").read_text())
    assert res["num_train"] == 200 and res["num_val"] == 200 and res["num_classes"] == 10
    assert res["val_split"] == "test" and res["t"] == 10 and res["feature_dim"] == 192
    assert set(res["per_k"]) == {"5", "20"}
    assert res["top1"] == max(v["top1"] for v in res["per_k"].values())
    for v in res["per_k"].values():
        assert 0 <= v["top1"] <= v["top5"] <= 100
    cached = sorted((tmp_path / "cache").iterdir())
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    # A second run reads the cache (files untouched) and reproduces the result exactly.
    assert main(get_args_parser().parse_args(argv + ["--output-dir", str(tmp_path / "out2")])) == 0
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert json.loads((tmp_path / "out2" / "knn_results.json").read_text())["per_k"] == res["per_k"]


# ---------------------------------------------------------------------------- two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shared_inputs():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, depth=1,
                            num_classes=0, global_pool="avg", class_token=False)
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(3, 16, 16, generator=g), i % 4) for i in range(11)]  # 11: the ranks hold 6 and 5
    return vit, data


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    dist.init_distributed("cpu")
    try:
        vit, data = _shared_inputs()
        feats, labels = extract_features(FeatureExtractor(vit), data, batch_size=2, num_workers=0, quiet=True)
        head = torch.nn.Linear(vit.num_features, 4)
        torch.manual_seed(2)
        torch.nn.init.normal_(head.weight)
        mine = [(f[None], y[None]) for f, y in zip(feats[rank::world], labels[rank::world])]  # this rank's share
        acc = evaluate(head, mine, device=torch.device("cpu"), quiet=True)
        out[rank] = {"feats": feats.tolist(), "labels": labels.tolist(), "acc": acc}
    finally:
        dist.destroy_distributed()


def test_two_processes_gather_features_in_order_and_reduce_accuracy():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        res = dict(out)
    vit, data = _shared_inputs()
    feats, labels = extract_features(FeatureExtractor(vit), data, batch_size=4, num_workers=0, quiet=True)
    head = torch.nn.Linear(vit.num_features, 4)
    torch.manual_seed(2)
    torch.nn.init.normal_(head.weight)
    acc = evaluate(head, [(feats, labels)], device=torch.device("cpu"), quiet=True)
    for r in (0, 1):
        torch.testing.assert_close(torch.tensor(res[r]["feats"]), feats, rtol=1e-5, atol=1e-6)
        assert res[r]["labels"] == labels.tolist() == [i % 4 for i in range(11)]
        assert res[r]["acc"]["n"] == 11 and res[r]["acc"]["top1"] == pytest.approx(acc["top1"])
        assert res[r]["acc"]["loss"] == pytest.approx(acc["loss"], rel=1e-5)
