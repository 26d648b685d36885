"""``benchmarks/gpu_check.py`` on a machine without CUDA: it says so, and its checks run tiny on the CPU.

The CPU runs go through the same functions the GPU run uses (``--device cpu``), so a bug in a
check shows here rather than in the few minutes a GPU machine is lent for.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


def test_the_checkpoint_check_runs_on_the_cpu_and_leaves_its_results_in_out(gpu_check, capsys, tmp_path):
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    assert gpu_check.main(["--device", "cpu", "--only", "checkpoint", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("preflight: tlsync ") and "torch " in out[0] and "lite0 " in out[0]
    assert out[1].startswith("PASS checkpoint: saved from cpu, loaded by a CPU-only process: weights identical")
    assert out[-1].startswith("gpu_check (cpu, smoke sizes): 1 passed, 0 failed")
    saved = json.loads((tmp_path / "out" / "gpu_check-checkpoint.json").read_text())
    assert saved["smoke"] and saved["summary"] == out[-1] and saved["preflight"]["gpu"] == "none (CPU smoke run)"
    assert [(r["name"], r["ok"]) for r in saved["results"]] == [("checkpoint", True)]
    assert "- `PASS checkpoint: saved from cpu" in (tmp_path / "out" / "BENCHMARKS-gpu-check.md").read_text()
    assert (ROOT / "BENCHMARKS.md").read_text() == benchmarks  # a smoke run writes no figures


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
    (result,) = list(check_loader(ctx))
    assert result.ok and "8 chess JPEGs (2048x1371)" in result.detail
    assert "fast trains 1000000.0 img/s: the LOADER LIMITS it by" in result.detail
    assert "slow trains 0.0 img/s:" in result.detail and "x headroom" in result.detail
    assert result.figures["loader_ips"] > 0


def test_the_benchmarks_section_lists_every_check(gpu_check, monkeypatch, tmp_path):
    import bench_report
    from gpu_check_report import write_section

    monkeypatch.setattr(bench_report, "BENCHMARKS_MD", tmp_path / "BENCHMARKS.md")
    results = [gpu_check.Result("amp x", True, "bfloat16 loss 1.0"), gpu_check.Result("ddp", False, "exit 1: boom")]
    write_section(results, "python benchmarks/gpu_check.py")
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "- `PASS amp x: bfloat16 loss 1.0`" in text and "- `FAIL ddp: exit 1: boom`" in text
    assert "1 of 2 checks passed; failed: ddp." in text


# -- two calls that each fit the device's 10-minute command, with a deadline inside each check ----------------

def test_the_two_calls_cover_every_check_once_within_the_budget(gpu_check):
    halves = [half.split(",") for half in gpu_check.HALVES]
    assert sorted(halves[0] + halves[1]) == sorted(gpu_check.CHECKS)
    assert halves == [["amp", "ddp", "checkpoint", "loader", "resume"], ["compile", "throughput"]]
    for half in halves:  # each check's allowance fits the call, which leaves a minute of the 600 s command
        assert sum(gpu_check.CHECK_BUDGET_S[name] for name in half) <= gpu_check.BUDGET_S <= 540


def test_a_check_past_its_allowance_is_stopped_keeps_what_it_found_and_the_next_check_runs(
        gpu_check, monkeypatch, tmp_path, capsys):
    def slow(ctx):
        yield gpu_check.Result("amp first", True, "measured before the deadline")
        time.sleep(60)  # a compilation or an epoch that would run on past the call's end
        yield gpu_check.Result("amp second", True, "never reached")

    monkeypatch.setitem(gpu_check.CHECK_FUNCTIONS, "amp", slow)
    monkeypatch.setitem(gpu_check.CHECK_FUNCTIONS, "compile", lambda ctx: iter([gpu_check.Result("compile", True, "")]))
    monkeypatch.setitem(gpu_check.CHECK_BUDGET_S, "amp", 0.15)  # x10 on the CPU plan: 1.5 s
    started = time.monotonic()
    results = gpu_check.run_checks(gpu_check.CPU, ("amp", "compile"), tmp_path)
    assert time.monotonic() - started < 10
    assert [(r.name, r.ok) for r in results] == [("amp first", True), ("amp", False), ("compile", True)]
    assert results[1].detail.startswith("stopped at its 2s deadline (its allowance; the 1 result(s) before it kept)")
    assert "FAIL amp: stopped at its 2s deadline" in capsys.readouterr().out


def test_checks_that_no_longer_fit_the_call_are_skipped(gpu_check, monkeypatch, tmp_path):
    monkeypatch.setitem(gpu_check.CHECK_FUNCTIONS, "ddp", lambda ctx: pytest.fail("ran past the budget"))
    results = gpu_check.run_checks(gpu_check.CPU, ("ddp",), tmp_path, budget=0.5)
    assert [(r.name, r.ok, r.detail) for r in results] == [("ddp", None, "skipped: the call's 0s budget is spent")]


def test_a_subprocess_past_the_deadline_is_killed_with_its_children(gpu_check, tmp_path):
    """torchrun's workers would otherwise hold the GPU through the next check."""
    marker = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(marker)!r}, 'w').write(str(p.pid)); time.sleep(60)\n")
    with pytest.raises(gpu_check.DeadlineExceeded), gpu_check.deadline(3):
        gpu_check.run_command([sys.executable, "-c", code], dict(os.environ), 60)
    grandchild = int(marker.read_text())
    for _ in range(50):
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {grandchild} outlived the deadline")


def test_merge_writes_one_section_from_both_calls_in_check_order(gpu_check, monkeypatch, tmp_path):
    import bench_report
    from gpu_check_report import merge

    monkeypatch.setattr(bench_report, "BENCHMARKS_MD", tmp_path / "BENCHMARKS.md")
    facts = {"gpu": "NVIDIA H100 80GB HBM3", "capability": "9.0", "amp_auto": "bfloat16", "torch": "2.x",
             "torchvision": "0.x", "cuda": "12.x", "lite0": False}
    calls = {"one": ("amp,loader", [("loader", True, {"loader_ips": 50.0}), ("amp x", True, {})]),
             "two": ("throughput", [("throughput m", True, {"tlsync_ips": 100.0, "model": "m"})])}
    for folder, (only, results) in calls.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"gpu_check-{only}.json").write_text(json.dumps({
            "command": f"gpu_check.py --only {only}", "preflight": facts, "summary": "", "smoke": False,
            "results": [{"name": n, "ok": ok, "detail": "d", "figures": f} for n, ok, f in results]}))
    merge([tmp_path / "one", tmp_path / "two"])
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "On NVIDIA H100 80GB HBM3 (compute capability 9.0, --amp auto: bfloat16" in text
    assert "Lite0 extra ABSENT" in text
    lines = [line for line in text.splitlines() if line.startswith("- `")]
    assert [line.split(":")[0] for line in lines] == ["- `PASS amp x", "- `PASS loader", "- `PASS throughput m"]
    assert "Loader against the GPU: m trains 100.0 img/s: the LOADER LIMITS it by 2.0x." in text
    assert "3 of 3 checks passed." in text
