"""``ldae pretrain`` on real CIFAR images (tiny model, CPU): loss goes down, exact resume, kill-and-resume,
DDP equivalence, NaN handling, bad-argument errors, checkpoint and log contents, and the benchmark's JSON."""
import hashlib
import importlib.util
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ldae.cli.pretrain import get_args_parser, main
from ldae.data.folders import build_dataset
from ldae.data.sampler import GlobalBatchSampler, SeededSamples
from ldae.data.shards import write_shards
from ldae.data.transforms import build_transform
from ldae.diffusion.loss import pca_weighted_loss
from ldae.engine.checkpoint import FORMAT, load_checkpoint, model_from_checkpoint
from ldae.engine.metrics_log import MetricsLogger, read_jsonl
from ldae.engine.pretrain import EXIT_NONFINITE, LAST, resolve_batch
from ldae.models.flops import model_train_flops
from ldae.models.size_spec import parse_model_spec
from ldae.tokenizers.pca import PatchPCA

REPO = Path(__file__).resolve().parent.parent
TINY = "custom:img=32,patch=4,dim=32,enc=1,dec=1,heads=2,d=8"  # 1 + 1 blocks of width 32
STEPS_PER_EPOCH = 25  # the cifar_root fixture holds 200 training images; global batch 8


def argv(data, out, *extra, tokenizer: Path | None = None) -> list[str]:
    """The tiny run's flags: with ``tokenizer`` (a saved patch PCA) or else --fit-tokenizer."""
    tok = ["--tokenizer", str(tokenizer)] if tokenizer is not None else ["--fit-tokenizer", "--fit-images", "200"]
    return ["--data", str(data), "--model", TINY, *tok, "--global-batch", "8", "--epochs", "2", "--warmup-epochs", "0.5",
            "--blr", "1e-2", "--num-workers", "0", "--device", "cpu", "--quiet", "--output-dir", str(out), *map(str, extra)]


def run(args: list[str]) -> int:
    return main(get_args_parser().parse_args(args))


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def assert_same_state(a: dict, b: dict, atol: float = 0.0) -> None:
    """Model, EMA and optimizer tensors of two checkpoints equal (bitwise for atol=0)."""
    assert a["step"] == b["step"]
    pairs = [(a["model"], b["model"])]
    if a.get("ema") is not None:
        pairs.append((a["ema"], b["ema"]))
    for sa, sb in pairs:
        assert sa.keys() == sb.keys()
        for k in sa:
            if atol == 0:
                assert torch.equal(sa[k], sb[k]), k
            else:
                torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=1e-5, msg=k)
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        for name in va:
            if atol == 0:
                assert torch.equal(va[name], vb[name]), (ka, name)


@pytest.fixture(scope="module")
def tok(cifar_root, tmp_path_factory) -> Path:
    """A patch PCA (p = 4, [-1, 1] pixels) of the training images, fitted once for the tests that do not fit their own."""
    path = tmp_path_factory.mktemp("tok") / "pca_p4.safetensors"
    ds = build_dataset(cifar_root, "train", build_transform(32, False, (0.5,) * 3, (0.5,) * 3))
    PatchPCA.fit(torch.utils.data.DataLoader(ds, batch_size=100), 4).save(path)
    return path


@pytest.fixture(scope="module")
def reference(cifar_root, tmp_path_factory) -> Path:
    """30 uninterrupted steps (across an epoch boundary) with random crops, flips and EMA; tokenizer fitted at start."""
    out = tmp_path_factory.mktemp("reference")
    assert run(argv(cifar_root, out, "--crop", "random_resized", "--hflip", "--ema-decay", 0.9, "--stop-at-step", 30, "--log-every", 5)) == 0
    return out


# ------------------------------------------------------------------------------------------ learning
def test_a_few_hundred_steps_learn_to_denoise_held_out_images(cifar_root, tok, tmp_path):
    """GPU-resident path (here on the CPU): after 200 steps the held-out loss beats the identity map x_t -> x_t."""
    assert run(argv(cifar_root, tmp_path, "--gpu-data", "--crop", "random_resized", "--hflip", "--epochs", 400, "--warmup-epochs", 1,
                    "--blr", 5e-2, "--stop-at-step", 200, "--log-every", 50, tokenizer=tok)) == 0
    model = model_from_checkpoint(tmp_path / LAST)
    tok = model.tokenizer
    test = build_dataset(cifar_root, "test", build_transform(32, False, tok.norm_mean, tok.norm_std))
    x = torch.stack([test[i][0] for i in range(0, len(test), 2)])  # 100 held-out images
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (len(x),), generator=g)
    with torch.no_grad():
        out = model(x, t=t, generator=g, return_dict=True)
        w = model.schedule.lookup(t)[2]
        identity = pca_weighted_loss(out.x_t, x, w, tok, model.d, model.tail_weight)
        untrained = pca_weighted_loss(torch.zeros_like(x), x, w, tok, model.d, model.tail_weight)  # zero-init output
    assert out.loss < 0.85 * identity < 0.85 * untrained
    losses = [r["loss"] for r in read_jsonl(tmp_path / "log.jsonl")]
    assert losses[-1] < 0.5 * losses[0]


# ------------------------------------------------------------------------------------------ exactness
def test_resume_mid_epoch_is_exact(cifar_root, reference, tmp_path):
    """12 steps, stop, resume (with DataLoader workers this time) to step 30 == 30 straight steps, bitwise."""
    common = ("--crop", "random_resized", "--hflip", "--ema-decay", 0.9, "--log-every", 5)
    assert run(argv(cifar_root, tmp_path, *common, "--stop-at-step", 12)) == 0
    assert load_checkpoint(tmp_path / LAST)["step"] == 12
    assert run(argv(cifar_root, tmp_path, *common, "--stop-at-step", 30, "--resume", "auto", "--num-workers", 2)) == 0
    assert_same_state(load_checkpoint(tmp_path / LAST), load_checkpoint(reference / LAST))
    steps = [r["step"] for r in read_jsonl(tmp_path / "log.jsonl")]
    assert steps == [5, 10, 12, 15, 20, 25, 30]  # one log, appended across the resume


def test_ddp_two_gloo_processes_equal_one_process_with_accumulation(cifar_root, tmp_path):
    """2 processes x batch 4 == 1 process x batch 4 x 2 accumulation steps (same images and noise per slot)."""
    extra = ("--crop", "random_resized", "--hflip", "--stop-at-step", 6, "--log-every", 3)
    assert run(argv(cifar_root, tmp_path / "single", *extra, "--accum-iter", 2)) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ldae.pretrain",
           *argv(cifar_root, tmp_path / "ddp", *extra)]
    proc = subprocess.run(cmd, env=subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ddp = load_checkpoint(tmp_path / "single" / LAST), load_checkpoint(tmp_path / "ddp" / LAST)
    assert ddp["step"] == 6 and ddp["args"]["global_batch"] == 8
    assert_same_state(single, ddp, atol=1e-6)
    # the loss logged by DDP is the mean over both ranks: the same numbers as the single process logs
    for a, b in zip(read_jsonl(tmp_path / "single" / "log.jsonl"), read_jsonl(tmp_path / "ddp" / "log.jsonl")):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


KILLER = r"""
import os, signal, sys, torch
mode, at = sys.argv[1], int(sys.argv[2])
calls = [0]
if mode == "step":  # die inside the optimizer step: gradients computed, weights not yet updated
    orig_step = torch.optim.AdamW.step
    def step(self, *a, **k):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return orig_step(self, *a, **k)
    torch.optim.AdamW.step = step
else:  # die half-way through writing a checkpoint
    orig_save = torch.save
    def save(obj, f, *a, **k):
        calls[0] += 1
        orig_save(obj, f, *a, **k)
        if calls[0] == at:
            os.truncate(f, os.path.getsize(f) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save
from ldae.cli.pretrain import get_args_parser, main
sys.exit(main(get_args_parser().parse_args(sys.argv[3:])))
"""


@pytest.fixture(scope="module")
def straight_10(cifar_root, tok, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight10")
    assert run(argv(cifar_root, out, "--stop-at-step", 10, "--save-every-steps", 4, tokenizer=tok)) == 0
    return out


@pytest.mark.parametrize("mode, at, intact_step", [("step", 7, 4), ("save", 2, 4)])
def test_sigkill_mid_step_or_mid_save_then_resume(cifar_root, tok, straight_10, tmp_path, mode, at, intact_step):
    args = argv(cifar_root, tmp_path, "--stop-at-step", 10, "--save-every-steps", 4, tokenizer=tok)
    proc = subprocess.run([sys.executable, "-c", KILLER, mode, str(at), *args], env=subprocess_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert load_checkpoint(tmp_path / LAST)["step"] == intact_step  # the previous checkpoint is intact
    partial = list(tmp_path.glob(".checkpoint-last.pth.*.tmp"))
    assert len(partial) == (1 if mode == "save" else 0)
    assert run(args + ["--resume", "auto"]) == 0
    assert not list(tmp_path.glob(".checkpoint-*.tmp"))  # the partial write was cleaned up
    assert_same_state(load_checkpoint(tmp_path / LAST), load_checkpoint(straight_10 / LAST))


SIGNALLER = r"""
import os, signal, sys, torch
at, sig = int(sys.argv[1]), getattr(signal, sys.argv[2])
calls = [0]
orig_step = torch.optim.AdamW.step
def step(self, *a, **k):  # the signal arrives in the middle of optimizer step `at`
    calls[0] += 1
    if calls[0] == at:
        os.kill(os.getpid(), sig)
    return orig_step(self, *a, **k)
torch.optim.AdamW.step = step
from ldae.cli.command import run
sys.exit(run("pretrain", sys.argv[3:]))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_sigterm_finishes_the_step_saves_and_resumes_exactly(cifar_root, tok, straight_10, tmp_path, sig):
    args = argv(cifar_root, tmp_path, "--stop-at-step", 10, "--save-every-steps", 4, tokenizer=tok)
    proc = subprocess.run([sys.executable, "-c", SIGNALLER, "7", sig, *args], env=subprocess_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr[-3000:]
    assert f"stopped by {sig} after step 7; {tmp_path / LAST} written; continue with --resume auto" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert load_checkpoint(tmp_path / LAST)["step"] == 7  # the step in flight finished and was saved
    assert run(args + ["--resume", "auto"]) == 0
    assert_same_state(load_checkpoint(tmp_path / LAST), load_checkpoint(straight_10 / LAST))


WAIT_IN_STEP = r"""
import os, sys, time, torch
at, marker = int(sys.argv[1]), sys.argv[2]
calls = [0]
orig_step = torch.optim.AdamW.step
def step(self, *a, **k):  # optimizer step `at` announces itself, then waits for the signal from outside
    calls[0] += 1
    if calls[0] == at:
        open(marker, "w").close()
        time.sleep(5)
    return orig_step(self, *a, **k)
torch.optim.AdamW.step = step
from ldae.cli.command import run
sys.exit(run("pretrain", sys.argv[3:]))
"""


def test_sigterm_to_the_process_group_with_loader_workers_saves(cifar_root, tok, straight_10, tmp_path):
    """A scheduler's stop (``kill -- -PGID``) reaches every process of the group: the loader workers must not die
    first (PyTorch's workers die on a SIGTERM that is not their parent's, and the run would crash unsaved)."""
    args = argv(cifar_root, tmp_path / "run", "--stop-at-step", 10, "--save-every-steps", 4, "--num-workers", 2, tokenizer=tok)
    marker = tmp_path / "in-step-7"
    proc = subprocess.Popen([sys.executable, "-c", WAIT_IN_STEP, "7", str(marker), *args], env=subprocess_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGTERM)  # from outside the group, to all of it
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert f"stopped by SIGTERM after step 7; {tmp_path / 'run' / LAST} written" in err and "Traceback" not in err
    assert load_checkpoint(tmp_path / "run" / LAST)["step"] == 7
    assert run(args + ["--resume", "auto"]) == 0
    assert_same_state(load_checkpoint(tmp_path / "run" / LAST), load_checkpoint(straight_10 / LAST))


def test_disk_full_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(cifar_root, tok, straight_10, tmp_path,
                                                                                  monkeypatch, capsys):
    from ldae.cli.command import run as cli_run

    good = tmp_path / LAST
    good.write_bytes((straight_10 / LAST).read_bytes())
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):  # what torch.save raises when the device fills up mid-write
        real_save(obj, f, *a, **k)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    assert cli_run("pretrain", argv(cifar_root, tmp_path, "--resume", "auto", "--save-every-steps", 2, tokenizer=tok)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"ldae pretrain: error: {good}: the write failed, the device is full (")
    assert err[-1].endswith(f"bytes free in {tmp_path}); the previous file is kept")
    assert hashlib.sha256(good.read_bytes()).hexdigest() == digest
    assert not list(tmp_path.glob(".checkpoint-*.tmp"))


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(cifar_root, tok, straight_10, tmp_path, capsys):
    good = tmp_path / LAST
    good.write_bytes((straight_10 / LAST).read_bytes())
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    # resumes at step 10; the next checkpoint would be written at step 12, after the loss has diverged
    rc = run(argv(cifar_root, tmp_path, "--lr", 1e12, "--resume", "auto", "--save-every-steps", 4, "--log-every", 1, tokenizer=tok))
    assert rc == EXIT_NONFINITE
    assert hashlib.sha256(good.read_bytes()).hexdigest() == digest
    err = capsys.readouterr().err
    assert "the training loss became NaN or inf at or before step 12; stopping without saving" in err
    assert f"The last good checkpoint is kept ({good})" in err
    assert read_jsonl(tmp_path / "log.jsonl")[-1]["event"] == "nonfinite"


# ------------------------------------------------------------------------------------------ contents
def test_checkpoint_holds_everything_and_rebuilds_the_model(reference):
    ckpt = load_checkpoint(reference / LAST)
    assert ckpt["format"] == FORMAT
    assert {"model", "ema", "optimizer", "scaler", "rng", "step", "epoch", "args", "tokenizer"} <= ckpt.keys()
    assert (ckpt["step"], ckpt["epoch"]) == (30, 30 // STEPS_PER_EPOCH)
    assert ckpt["scaler"] is None and {"torch", "python"} <= ckpt["rng"].keys()
    json.dumps(ckpt["args"])  # plain values only
    assert ckpt["args"]["model"] == TINY and ckpt["args"]["norm"] == "dit"
    assert ckpt["tokenizer"]["patch_size"] == "4" and ckpt["tokenizer"]["num_images"] == "200"
    model = model_from_checkpoint(reference / LAST)  # EMA weights, custom size rebuilt from the args
    assert not model.training and model.size == parse_model_spec(TINY)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["ema"][k]), k
    saved_tok = PatchPCA.load(reference / "tokenizer.safetensors")
    assert torch.equal(saved_tok.components, model.tokenizer.components)
    info = json.loads((reference / "run.json").read_text())
    assert (info["steps_per_epoch"], info["batch_size"], info["accum_iter"], info["global_batch"]) == (STEPS_PER_EPOCH, 8, 1, 8)
    assert info["lr"] == pytest.approx(1e-2 * 8 / 256)


def test_kept_checkpoints_and_log_records(cifar_root, tok, tmp_path):
    assert run(argv(cifar_root, tmp_path, "--epochs", 2, "--save-every-epochs", 1, "--log-every", 10, "--peak-tflops", 1, tokenizer=tok)) == 0
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.pth"))
    assert names == ["checkpoint-0001.pth", "checkpoint-0002.pth", LAST]
    assert load_checkpoint(tmp_path / "checkpoint-0001.pth")["step"] == STEPS_PER_EPOCH
    recs = read_jsonl(tmp_path / "log.jsonl")
    assert [r["step"] for r in recs] == [10, 20, 25, 30, 40, 50]  # every 10 steps and at each epoch's end
    flops = model_train_flops(model_from_checkpoint(tmp_path / LAST))
    for r in recs:
        assert {"step", "epoch", "loss", "lr", "img_per_s", "mfu", "data_wait", "time"} <= r.keys()
        assert r["epoch"] == pytest.approx(r["step"] / STEPS_PER_EPOCH, abs=1e-4)
        assert math.isfinite(r["loss"]) and r["img_per_s"] > 0
        assert r["mfu"] == pytest.approx(flops * r["img_per_s"] / 1e12, rel=1e-2)  # img/s is logged rounded
    assert recs[-1]["lr"] < recs[2]["lr"]  # cosine decay after the warmup


def test_webdataset_shards(cifar_root, tok, tmp_path):
    shards = write_shards(build_dataset(cifar_root, "train"), str(tmp_path / "shards" / "train-%03d.tar"), max_count=50)
    assert len(shards) == 4
    args = argv(cifar_root, tmp_path / "run", "--epochs", 1, "--epoch-samples", 40, "--log-every", 1, tokenizer=tok)
    i = args.index("--data")
    args[i:i + 2] = ["--data-shards", str(tmp_path / "shards" / "train-{000..003}.tar")]
    assert run(args) == 0
    ckpt = load_checkpoint(tmp_path / "run" / LAST)
    assert ckpt["step"] == 5  # 40 samples per epoch / global batch 8
    assert all(math.isfinite(r["loss"]) for r in read_jsonl(tmp_path / "run" / "log.jsonl"))


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("extra, env, exc, msg", [
    ((), {"WORLD_SIZE": "3"}, ValueError, "--global-batch 8 is not divisible by world size 3 x --accum-iter 1 = 3: "
                                          "choose a global batch that is a multiple of it"),
    (("--batch-size", 3, "--accum-iter", 2), {}, ValueError, "--global-batch 8 != --batch-size 3 x --accum-iter 2 x world size 1 = 6"),
    (("--batch-size", 3), {}, ValueError, "--global-batch 8 is not divisible by --batch-size 3 x world size 1 = 3"),
    (("--data-shards", "x-{0..3}.tar"), {}, ValueError, "exactly one of --data"),
    (("--fit-tokenizer", "--tokenizer", "pca.safetensors"), {}, ValueError, "pass either --tokenizer or --fit-tokenizer, not both"),
    (("--resume", "nowhere.pth"), {}, FileNotFoundError, "--resume nowhere.pth does not exist"),
    (("--output-dir", ""), {}, ValueError, "--output-dir is empty; name the run's folder (e.g. --output-dir runs/my_run)"),
])
def test_bad_arguments_fail_before_any_work(cifar_root, tmp_path, monkeypatch, extra, env, exc, msg):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)").replace("{", r"\{").replace("}", r"\}")):
        run(argv(cifar_root, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()


def test_missing_or_empty_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"--data {tmp_path / 'none'} does not exist"):
        run(argv(tmp_path / "none", tmp_path / "out"))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found in"):
        run(argv(tmp_path / "empty", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_images_smaller_than_a_patch(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "data" / "train" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "data" / "train" / c / "0.png")
    args = argv(tmp_path / "data", tmp_path / "out")
    args[args.index("--model") + 1] = "custom:img=32,patch=16,dim=32,enc=1,dec=1,heads=2,d=8"
    with pytest.raises(ValueError, match="images are 8x8, smaller than the model's 16x16 patch"):
        run(args)


def test_unknown_model_name(cifar_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--data", str(cifar_root), "--model", "huge"])
    assert "argument --model: unknown model 'huge': expected one of ['base', 'half_large'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--model", "custom:img=30,patch=4,dim=32,enc=1,dec=1,heads=2"])
    assert "the image side 30 must be a multiple of the patch size 4" in capsys.readouterr().err


def test_tokenizer_must_match_patch_size_and_normalisation(cifar_root, tmp_path):
    wrong_patch = PatchPCA.fit([torch.randn(4, 3, 8, 8)], 2)
    wrong_patch.save(tmp_path / "p2.safetensors")
    args = argv(cifar_root, tmp_path / "out", tokenizer=tmp_path / "p2.safetensors")
    args = args[: args.index("--tokenizer")] + args[args.index("--tokenizer") + 2 :]
    with pytest.raises(ValueError, match=r"tokenizer does not match the model: it was fitted with patch size 2 \(model expects 4\)"):
        run(args + ["--tokenizer", str(tmp_path / "p2.safetensors")])
    PatchPCA.fit([torch.randn(4, 3, 8, 8)], 4).save(tmp_path / "p4.safetensors")  # fitted under the [-1, 1] default
    with pytest.raises(ValueError, match=r"normalisation mean \[0.5, 0.5, 0.5\] \(model expects \[0.485, 0.456, 0.406\]\)"):
        run(args + ["--tokenizer", str(tmp_path / "p4.safetensors"), "--norm", "imagenet"])
    with pytest.raises(ValueError, match="latent noise needs a tokenizer: pass --tokenizer PATH or --fit-tokenizer"):
        run(args)
    assert not list((tmp_path / "out").glob("*.pth"))


def test_resume_refuses_other_model_flags(reference, cifar_root, tmp_path):
    (tmp_path / LAST).write_bytes((reference / LAST).read_bytes())
    with pytest.raises(ValueError, match=r"--resume: the model flags differ from the checkpoint's: --d 4 \(checkpoint: None\)"):
        run(argv(cifar_root, tmp_path, "--resume", "auto", "--d", 4))


# ------------------------------------------------------------------------------------------ parts
def test_batch_resolution():
    assert resolve_batch(2048, 8, None, None) == (256, 1)
    assert resolve_batch(2048, 8, 128, None) == (128, 2)
    assert resolve_batch(2048, 8, None, 4) == (64, 4)
    assert resolve_batch(2048, 16, 64, 2) == (64, 2)


def test_sampler_slots_do_not_depend_on_world_size_or_accumulation():
    one = list(GlobalBatchSampler(50, 4, accum=2, rank=0, world_size=1, seed=3))
    r0 = list(GlobalBatchSampler(50, 4, accum=1, rank=0, world_size=2, seed=3))
    r1 = list(GlobalBatchSampler(50, 4, accum=1, rank=1, world_size=2, seed=3))
    assert len(one) == 2 * 6 and len(r0) == len(r1) == 6  # 50 // 8 = 6 steps, the last 2 images dropped
    assert one[0::2] == r0 and one[1::2] == r1  # slot k = rank * accum + micro holds the same images
    flat = [i for b in one for _, i in b]
    assert len(set(flat)) == 48
    s = GlobalBatchSampler(50, 4, accum=2, rank=0, world_size=1, seed=3)
    s.set_epoch(0, start_step=4)
    assert list(s) == one[8:] and len(s) == 4
    s.set_epoch(1)
    assert [b[0][0] for b in s] == [1] * 12 and list(s) != one


def test_seeded_samples_augment_by_epoch_and_index_only():
    class Rand(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.rand(2), i

    ds = SeededSamples(Rand(), seed=1)
    a = ds[(0, 3)][0]
    torch.rand(5)  # the global stream moved on ...
    assert torch.equal(ds[(0, 3)][0], a)  # ... the sample's augmentation did not
    assert not torch.equal(ds[(1, 3)][0], a) and not torch.equal(ds[(0, 4)][0], a)
    before = torch.get_rng_state()
    ds[(2, 2)]
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left untouched
    assert len(ds) == 10


def test_metrics_logger(tmp_path):
    stream = io.StringIO()
    with MetricsLogger(tmp_path / "log.jsonl", total_steps=100, stream=stream) as log:
        log.log({"step": 10, "epoch": 0.1, "loss": float("nan"), "lr": 1e-4, "img_per_s": 12.5, "mfu": 0.5})
        log.info("hello")
    rec = read_jsonl(tmp_path / "log.jsonl")[0]
    assert rec["loss"] == "nan" and rec["step"] == 10 and "time" in rec  # strict JSON: no bare NaN
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("step 10/100  epoch 0.1  loss nan  lr 1.000e-04  img_per_s 12.5  mfu 50.0%")
    assert lines[1] == "hello"
    quiet = io.StringIO()
    with MetricsLogger(tmp_path / "q.jsonl", quiet=True, stream=quiet) as log:
        log.log({"step": 1, "loss": 1.0})
    assert quiet.getvalue() == "" and len(read_jsonl(tmp_path / "q.jsonl")) == 1
    with MetricsLogger(tmp_path / "r1.jsonl", enabled=False, stream=quiet) as log:  # ranks other than 0
        log.log({"step": 1})
    assert not (tmp_path / "r1.jsonl").exists()


def test_cli_help_shows_single_gpu_and_multi_node_examples(capsys):
    from ldae.cli import command as cli

    with pytest.raises(SystemExit) as e:
        cli.main(["pretrain", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "usage: ldae pretrain" in text and "--global-batch" in text
    assert "torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint" in text


def test_benchmark_smoke_writes_well_formed_json(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_pretrain", REPO / "bench" / "bench_pretrain.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--smoke", "--modes", "eager", "--out", str(out), "--device", "cpu"]) == 0
    rep = json.loads(out.read_text())
    assert rep["smoke"] is True and rep["device_type"] == "cpu" and rep["torch"] == torch.__version__
    assert {"device", "timm", "command", "commit", "date", "peak_tflops", "results", "ratios", "targets"} <= rep.keys()
    rows = {(r["config"], r["model"], r["mode"]) for r in rep["results"]}
    assert rows == {("base", "ldae", "eager"), ("base", "timm_vit_mse", "eager"), ("cifar", "ldae", "eager"),
                    ("cifar", "ldae_end2end", "eager"), ("cifar", "timm_vit_mse", "eager")}
    for r in rep["results"]:
        assert r["img_per_s"] == pytest.approx(r["batch"] / (r["step_ms"] / 1000), rel=1e-2)
        assert r["mfu"] == pytest.approx(r["train_gflops_per_image"] * 1e9 * r["img_per_s"] / (rep["peak_tflops"] * 1e12), rel=2e-2)
    assert set(rep["ratios"]) == {"base_ldae_over_timm_eager", "cifar_ldae_over_timm_eager"}
    assert rep["targets"]["cifar_end_to_end_img_per_s"]["target"] == 20000.0


def test_a_finished_run_says_where_its_checkpoint_is_and_what_to_run_next(cifar_root, tok, tmp_path, capsys):
    args = [a for a in argv(cifar_root, tmp_path / "run", "--epochs", 1, tokenizer=tok) if a != "--quiet"]
    assert run(args) == 0
    out = capsys.readouterr().err  # the run's console lines go to stderr, the metrics to log.jsonl
    last = tmp_path / "run" / "checkpoint-0001.pth"
    assert last.is_file()
    assert f"done: {STEPS_PER_EPOCH} steps; checkpoint {last}. next: ldae export {last} --out {tmp_path / 'run' / 'export'}" in out
    assert f"ldae probe --mode cached --model {last} --data {cifar_root}" in out
    first = next(line for line in out.splitlines() if line.startswith("l-DAE "))
    assert f"{torch.get_num_threads()} threads" in first and " attention, " in first  # what ran, in the first log line
