"""``benchmarks/gpu_check.py`` on a machine without CUDA: it says so, and its checks run tiny on the CPU.

The CPU runs go through the same functions the GPU run uses (``--device cpu``), so a bug in a
check shows here rather than in the few minutes a GPU machine is lent for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    import gpu_check

    return gpu_check


def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    done = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gpu_check: no CUDA device on this machine")
    assert "--device cpu" in done.stdout


def test_an_unknown_check_is_a_usage_error(gpu_check, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--device", "cpu", "--only", "amp,speed"])
    assert exit_.value.code == 2 and "unknown check 'speed'" in capsys.readouterr().err


def test_the_checkpoint_check_runs_on_the_cpu_and_prints_a_line_and_a_summary(gpu_check, capsys, tmp_path):
    assert gpu_check.main(["--device", "cpu", "--only", "checkpoint"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("PASS checkpoint: saved from cpu, loaded by a CPU-only process: weights identical")
    assert out[-1].startswith("gpu_check (cpu, smoke sizes): 1 passed, 0 failed")


def test_amp_steps_run_bf16_and_fp16_with_a_live_scaler(gpu_check):
    plan = gpu_check.CPU
    bf16 = gpu_check.amp_steps("ssdlite320_mobilenet_v3_large", plan, torch.bfloat16)
    fp16 = gpu_check.amp_steps("ssdlite320_mobilenet_v3_large", plan, torch.float16)
    assert bf16.startswith("bfloat16 loss ") and "scale" not in bf16
    assert fp16.startswith("float16 loss ") and " scale " in fp16


def test_a_failing_check_is_reported_and_the_others_still_run(gpu_check, monkeypatch, tmp_path, capsys):
    def broken(ctx):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setitem(gpu_check.CHECK_FUNCTIONS, "ddp", broken)
    monkeypatch.setitem(gpu_check.CHECK_FUNCTIONS, "compile", lambda ctx: [gpu_check.Result("compile", True, "ok")])
    results = gpu_check.run_checks(gpu_check.CPU, ("ddp", "compile"), tmp_path)
    assert [(r.name, r.ok) for r in results] == [("ddp", False), ("compile", True)]
    assert "FAIL ddp: RuntimeError: CUDA error: an illegal memory access" in capsys.readouterr().out


def test_the_loader_check_says_whether_the_loader_limits_the_gpu(gpu_check, shared_datasets, tmp_path):
    from gpu_check_speed import check_loader

    ctx = gpu_check.Context(gpu_check.CPU, tmp_path, deadline=float("inf"))
    ctx.results = [gpu_check.Result("throughput fast", True, "", {"tlsync_ips": 1e6, "model": "fast"}),
                   gpu_check.Result("throughput slow", True, "", {"tlsync_ips": 1e-3, "model": "slow"})]
    (result,) = check_loader(ctx)
    assert result.ok and "8 chess JPEGs (2048x1371)" in result.detail
    assert "fast trains 1000000.0 img/s: the LOADER LIMITS it by" in result.detail
    assert "slow trains 0.0 img/s:" in result.detail and "x headroom" in result.detail
    assert result.figures["loader_ips"] > 0


def test_the_benchmarks_section_lists_every_check(gpu_check, monkeypatch, tmp_path):
    import bench_report
    from gpu_check_speed import write_section

    monkeypatch.setattr(bench_report, "BENCHMARKS_MD", tmp_path / "BENCHMARKS.md")
    results = [gpu_check.Result("amp x", True, "bfloat16 loss 1.0"), gpu_check.Result("ddp", False, "exit 1: boom")]
    write_section(results, "python benchmarks/gpu_check.py")
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "- `PASS amp x: bfloat16 loss 1.0`" in text and "- `FAIL ddp: exit 1: boom`" in text
    assert "1 of 2 checks passed; failed: ddp." in text
