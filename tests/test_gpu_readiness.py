"""What a user's first GPU would have hit, checked on the CPU (issue 24).

No CUDA device runs here, so each test builds the state a GPU machine would be in: a
capability query answering (7, 5) for a T4, a checkpoint whose tensors are tagged as living
on ``cuda:0``, two gloo processes where one rank's batch is bad. ``benchmarks/gpu_check.py``
confirms the same paths on a real GPU when one is lent.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from tlsync.errors import TlsyncError
from tlsync.format import ImageRef, Item

T4, A100 = (7, 5), (8, 0)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``torch.cuda`` answering like a machine with GPUs; returns the ``set_device`` calls made."""
    calls: list[Any] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: T4)
    return calls


# -- 1. bf16 only where it is native; --amp ------------------------------------------------------------

@pytest.mark.parametrize(("capability", "mode", "dtype", "scaled"), [
    (T4, "auto", torch.float16, True), (A100, "auto", torch.bfloat16, False), (T4, "bf16", torch.bfloat16, False),
    (A100, "fp16", torch.float16, True), (A100, "off", None, False)])
def test_amp_decides_by_compute_capability_and_obeys_the_flag(fake_cuda, monkeypatch, capability, mode, dtype,
                                                              scaled):
    from tlsync.trainer.training.engine import amp_settings

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    chosen, scaler = amp_settings(torch.device("cuda", 0), mode)
    assert chosen == dtype and scaler.is_enabled() == scaled


def test_amp_on_the_cpu_is_off_by_default_and_refused_when_asked_for():
    from tlsync.trainer.training.engine import amp_settings

    assert amp_settings(torch.device("cpu"))[0] is None
    with pytest.raises(TlsyncError, match="--amp bf16: mixed precision runs on CUDA GPUs only"):
        amp_settings(torch.device("cpu"), "bf16")


def test_train_has_an_amp_option_defaulting_to_the_train_config_and_resume_accepts_it(run_cli, tmp_path):
    from tlsync.trainer import TrainConfig

    shown = run_cli("train", "--help")
    assert "--amp [auto|bf16|fp16|off]" in shown.output and f"[default: {TrainConfig.amp}]" in shown.output
    refused = run_cli("train", "--resume", str(tmp_path / "gone"), "--epochs", "3")
    assert refused.exit_code != 0 and "only --device, --workers and --amp may change" in refused.output
    accepted = run_cli("train", "--resume", str(tmp_path / "gone"), "--amp", "fp16")
    assert accepted.exit_code != 0 and "--amp" not in accepted.output  # refused for the missing run, not the flag


# -- 7, 8. setup on cuda:1 of a T4: its GPU made current, fp16 with a scaler, cudnn.benchmark left off --------

def test_setup_on_a_second_older_gpu(fake_cuda, monkeypatch, store, tmp_path):
    from tlsync.connectors.synthetic import SyntheticSource
    from tlsync.pull import pull
    from tlsync.trainer.distributed.runtime import Runtime
    from tlsync.trainer.training import fit
    from tlsync.trainer.training.settings import RunSettings

    pull(store, SyntheticSource(), {"items": 4, "size": 64, "seed": 0}, "syn", split_ratios=(1.0, 0, 0))
    version = store.open("syn")
    monkeypatch.setattr(nn.Module, "to", lambda self, *args, **kwargs: self)  # no GPU to move to
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    runtime = Runtime(torch.device("cuda", 1))
    settings = RunSettings(dataset="syn", categories=version.categories, lr=0.01, batch_size=2, workers=0)
    loop = fit.setup(tmp_path, settings, version, fit.TrainData.read(version), nn.Linear(2, 2), runtime, None)
    assert fake_cuda == [torch.device("cuda", 1)]
    assert loop.amp_dtype == torch.float16 and loop.scaler.is_enabled()
    assert torch.backends.cudnn.benchmark is False


# -- 2. resuming with fewer GPUs, or under fp16 after a disabled scaler --------------------------------

def test_cuda_random_state_is_the_training_devices_only_and_restores_with_fewer_gpus(fake_cuda, monkeypatch):
    from tlsync.trainer.training.engine import rng_state, set_rng_state

    restored: list[tuple[torch.Tensor, Any]] = []

    def set_state(state: torch.Tensor, device: Any = "cuda") -> None:  # like torch's: no such GPU, an error
        index = torch.device(device).index or 0 if not isinstance(device, int) else device
        if index >= 1:
            raise RuntimeError("CUDA error: invalid device ordinal")
        restored.append((state, device))

    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.full((4,), 7, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("saved every GPU's state"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: [set_state(s, i) for i, s in enumerate(states)])
    state = rng_state(torch.device("cuda", 0))
    assert torch.equal(state["cuda"], torch.full((4,), 7, dtype=torch.uint8))
    set_rng_state(state, torch.device("cuda", 0))
    older = {**state, "cuda": [torch.zeros(4, dtype=torch.uint8), torch.ones(4, dtype=torch.uint8)]}  # saved on 2 GPUs
    set_rng_state(older, torch.device("cuda", 0))  # this machine has one
    assert [s.tolist() for s, _ in restored] == [[7] * 4, [0] * 4]
    set_rng_state(state, torch.device("cpu"))  # resumed on the CPU: nothing of CUDA's to restore
    assert len(restored) == 2


def test_a_run_saved_with_a_disabled_scaler_resumes_under_fp16():
    from tlsync.trainer.training.engine import build_scheduler, restore_training_state, rng_state

    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, 10, 1)
    saved = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
             "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict()}
    assert saved["scaler"] == {}
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # enabled, as under --amp fp16
    restore_training_state(saved, optimizer, scheduler, scaler, torch.device("cpu"))
    assert scaler.is_enabled() and scaler.get_scale() == 1024.0  # a fresh scale, as on a first fp16 step
    earlier = torch.amp.GradScaler("cpu", init_scale=64.0)
    restore_training_state({**saved, "scaler": earlier.state_dict()}, optimizer, scheduler, scaler, torch.device("cpu"))
    assert scaler.get_scale() == 64.0  # a live scale carries over


# -- 10. checkpoints hold CPU tensors ------------------------------------------------------------------

def test_a_checkpoint_of_gpu_tensors_loads_with_a_plain_torch_load_without_a_gpu(tmp_path, monkeypatch):
    """torch records each storage's device in the file; here the model's storages are tagged ``cuda:0`` (what
    torch.save writes for a model trained on a GPU) and ``.cpu()`` makes a new storage (a device-to-host copy)."""
    from tlsync.trainer import load_checkpoint, save_checkpoint

    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(4, 3)).sum().backward()
    optimizer.step()
    on_gpu = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    on_gpu |= {s["momentum_buffer"].untyped_storage().data_ptr() for s in optimizer.state.values()}

    def tagger(storage: Any) -> str | None:
        return "cuda:0" if storage.data_ptr() in on_gpu else None

    registry = [(0, tagger, lambda storage, location: None), *torch.serialization._package_registry]
    monkeypatch.setattr(torch.serialization, "_package_registry", registry)
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *args, **kwargs: self.clone())
    path = save_checkpoint(tmp_path / "last.pt", model, ["a", "b"], {"model": "x"}, optimizer=optimizer.state_dict())
    assert not torch.cuda.is_available()
    plain = torch.load(path, weights_only=True)  # raises for a storage saved on cuda:0
    assert torch.equal(plain["model"]["0.weight"], model.state_dict()["0.weight"])
    assert load_checkpoint(path)["optimizer"]["state"][0]["momentum_buffer"].device.type == "cpu"
    restored = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    restored.load_state_dict(plain["model"])  # batch norm's versioned loading still finds its metadata


# -- 6. --compile: the backbone only ----------------------------------------------------------------------

def test_compile_compiles_the_backbone_in_place_and_leaves_the_detector_and_checkpoint_names_alone():
    from tlsync.trainer import TrainConfig, build_model
    from tlsync.trainer.distributed.runtime import Runtime

    model = build_model("fasterrcnn_mobilenet_v3_large_320_fpn", 2, "none", 320)
    names = list(model.state_dict())
    net = Runtime(torch.device("cpu")).wrap(model, TrainConfig(dataset="x", compile=True))
    assert net is model and model._compiled_call_impl is None  # the detector itself is not compiled
    assert model.backbone._compiled_call_impl is not None  # its backbone (body + FPN) is
    assert list(model.state_dict()) == names


# -- 11. box geometry in fp32 under bf16 autocast ----------------------------------------------------------

@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_fpn", "fcos_resnet50_fpn",
                                  "ssdlite320_mobilenet_v3_large"])
def test_boxes_decoded_under_bf16_autocast_match_fp32_within_half_a_pixel_at_640(name):
    from torchvision.models.detection.image_list import ImageList

    from tlsync.trainer import build_model

    model = build_model(name, 3, "none", 640).eval()
    generator = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
    coder = model.rpn.box_coder if hasattr(model, "rpn") else model.box_coder
    images = ImageList(torch.zeros(1, 3, 640, 640), [(640, 640)])
    with torch.no_grad():
        maps = list(model.backbone(torch.zeros(1, 3, 640, 640)).values())
    torch.manual_seed(0)
    anchors = generator(images, maps)[0]
    codes = (torch.randn(len(anchors), 4) * 0.2).bfloat16()  # a head's output under bf16 autocast
    if name.startswith("fcos"):
        codes = codes.abs() * 8  # FCOS regresses distances to the box sides, in strides

    def decode(maps: list[torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
        anchors = generator(images, maps)[0]
        decoded = coder.decode(codes, anchors) if name.startswith("fcos") else coder.decode(codes, [anchors])
        return decoded.reshape(-1, 4)

    reference = decode(maps, codes.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = decode([m.bfloat16() for m in maps], codes)
    inside = ((reference >= 0) & (reference <= 640)).all(dim=1)
    assert inside.sum() > 100
    assert (mixed.float() - reference)[inside].abs().max() < 0.5


# -- 5. val evaluation through a DataLoader ------------------------------------------------------------------

class WholeImage(nn.Module):
    """Predicts one box covering whatever image it is given, and records the sizes it was given."""

    tlsync_build = {"img_size": 500}

    def __init__(self, log: Path):
        super().__init__()
        self.log = log

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        with self.log.open("a") as f:
            f.writelines(f"{tuple(i.shape)}\n" for i in images)
        return [{"boxes": torch.tensor([[0.0, 0.0, i.shape[-1], i.shape[-2]]]), "labels": torch.tensor([1]),
                 "scores": torch.tensor([0.9])} for i in images]


def test_val_evaluation_decodes_in_loader_workers_at_the_model_size_with_boxes_in_full_image_pixels(
        tmp_path, monkeypatch):
    from PIL import Image

    from tlsync.trainer.evaluation import loader

    path = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1000), (120, 90, 60)).save(path, quality=90)
    decoded_in: list[int] = []
    real = loader.decode_scaled

    def decode(p: Path, longest: int | None) -> Any:
        (tmp_path / f"pid-{os.getpid()}").touch()
        return real(p, longest)

    monkeypatch.setattr(loader, "decode_scaled", decode)
    items = [Item(f"i{n}", ImageRef(str(path), width=2000, height=1000), [], split="val") for n in range(3)]
    model = WholeImage(tmp_path / "sizes.txt")
    found = list(loader.predict_loaded(model, items, lambda item: path, ["thing"], "cpu", batch_size=2, workers=2,
                                       draft=True))
    decoded_in = [int(p.name[4:]) for p in tmp_path.glob("pid-*")]
    assert decoded_in and os.getpid() not in decoded_in  # in the loader's worker processes
    assert (tmp_path / "sizes.txt").read_text().split("\n")[:3] == ["(3, 250, 500)"] * 3  # JPEG draft: 1/4
    assert [(b.x, b.y, b.width, b.height) for item in found for b in item.annotations] == [(0, 0, 2000, 1000)] * 3
    full = list(loader.predict_loaded(model, items[:1], lambda item: path, ["thing"], "cpu"))
    assert (tmp_path / "sizes.txt").read_text().split("\n")[3] == "(3, 1000, 2000)"  # without draft: full size
    assert full[0].annotations == found[0].annotations


def test_an_undecodable_val_image_is_a_one_line_error_naming_it(tmp_path):
    from tlsync.trainer.evaluation.loader import predict_loaded

    path = tmp_path / "cut.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    items = [Item("x", ImageRef(str(path), width=10, height=10), [], split="val")]
    with pytest.raises(TlsyncError, match=r"cut\.jpg: cannot decode image \(\w*Error\)$"):
        list(predict_loaded(WholeImage(tmp_path / "sizes.txt"), items, lambda item: path, ["thing"], "cpu",
                            workers=1))


# -- 4. NCCL errors reach tlsync's handler; a silent death is named by its signal ----------------------------

def test_nccl_is_told_to_raise_rather_than_kill_the_process(fake_cuda, monkeypatch):
    from tlsync.trainer.distributed import ddp

    seen: list[tuple[str, str | None]] = []
    monkeypatch.setattr(ddp.dist, "init_process_group",
                        lambda backend, timeout: seen.append((backend, os.environ.get(ddp.NCCL_ERROR_HANDLING_ENV))))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv(ddp.NCCL_ERROR_HANDLING_ENV, raising=False)
    assert ddp.init_process_group("cuda") == torch.device("cuda", 1)
    monkeypatch.setenv(ddp.NCCL_ERROR_HANDLING_ENV, "1")  # the user's own choice wins
    ddp.init_process_group("cuda")
    assert seen == [("nccl", "2"), ("nccl", "1")] and fake_cuda == [torch.device("cuda", 1)] * 2


def test_a_worker_that_dies_silently_is_described_by_how_it_died():
    from tlsync.trainer.distributed.launcher import death

    assert "NCCL's watchdog" in death(signal.Signals.SIGABRT.name, None)
    assert "out of memory" not in death("SIGABRT", None)
    assert "OOM killer" in death("SIGKILL", None)
    assert death(None, 3) == "died (exit code 3) without reporting an error"


# -- 3. under DDP every rank takes the same decision (gloo, 2 processes) ----------------------------------------

class Toy(nn.Module):
    """A detector's interface in one parameter: images and targets in, a loss dict out."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([image.mean() for image in images]).mean()
        return {"loss_toy": (self.w * pixels).sum() + sum(t["shift"].sum() for t in targets)}


def agree_job(bad: str, *, runtime: Any) -> dict[str, Any]:
    """Four steps; rank 1's second batch is empty (every image failed to decode) or gives a NaN loss."""
    from torch.nn.parallel import DistributedDataParallel

    from tlsync.trainer.training.engine import NonFiniteLoss, build_scheduler, train_one_epoch

    model = DistributedDataParallel(Toy())
    batches: list[Any] = []
    for step in range(4):
        images, targets = [torch.full((3, 4, 4), 0.5)], [{"shift": torch.zeros(1)}]
        if runtime.rank == 1 and step == 1:
            images, targets = ([], []) if bad == "empty" else (images, [{"shift": torch.tensor([float("nan")])}])
        batches.append((images, targets, []))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    try:
        result = train_one_epoch(model, optimizer, batches, runtime.device, build_scheduler(optimizer, 4, 1), scaler)
    except NonFiniteLoss as e:
        return {"error": str(e)}
    return {"images": result.images, "w": model.module.w.item()}


@pytest.mark.parametrize("bad", ["empty", "nan"])
def test_a_bad_batch_on_one_rank_is_decided_by_all_ranks_without_a_hang(bad, monkeypatch):
    from functools import partial

    from tlsync.trainer import launch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TLSYNC_DIST_TIMEOUT", "20")  # without the agreement, rank 0 waits this long, then fails
    rank0, rank1 = launch(partial(agree_job, bad), devices=2, device="cpu")
    if bad == "empty":  # both skipped the step rank 1 could not take, and stayed identical
        assert rank0["images"] == rank1["images"] == 3 and rank0["w"] == rank1["w"]
    else:  # both stopped at the same step; rank 1 shows its losses, rank 0 names rank 1
        assert rank1["error"].startswith("the loss became nan at iteration 2 (loss_toy=nan)")
        assert rank0["error"] == "the loss became non-finite on rank(s) 1 at iteration 2"
