"""What ``gpu_check.py`` knows before it starts (the preflight) and what it leaves behind.

A lent GPU machine gives back only the folder ``$OUT``, so each call writes there: its
results as JSON (``gpu_check-<checks>.json``) and the BENCHMARKS.md section those results
make (``BENCHMARKS-gpu-check.md``). Back on the working machine, ``gpu_check.py --merge DIR
...`` reads every call's JSON and writes the one section of BENCHMARKS.md, so the figures of
the two calls land together, with the device named.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench_report import BENCHMARKS_MD, update_section
from gpu_check import CHECKS, Plan, Result

SECTION = "gpu-check"
TITLE = "GPU check: AMP, DDP + SyncBatchNorm, resume, compile, checkpoints, speed"


def preflight(plan: Plan, chess: Path | None) -> dict[str, Any]:
    """Versions, the device (name, compute capability, what ``--amp auto`` picks), the Lite0 extra, the chess export.

    Importing ``tlsync.trainer``'s training loop here fails the call at once, with the reason,
    when tlsync is not installed on the device.
    """
    import torch
    import torchvision

    import tlsync
    from tlsync.trainer.training.engine import amp_dtype

    facts: dict[str, Any] = {"tlsync": Path(tlsync.__file__).parent.as_posix(), "python": platform.python_version(),
                             "torch": torch.__version__, "torchvision": torchvision.__version__,
                             "cuda": torch.version.cuda}
    if plan.device == "cuda":
        major, minor = torch.cuda.get_device_capability(0)
        chosen = amp_dtype(torch.device("cuda", 0), "auto")
        facts.update(gpu=torch.cuda.get_device_name(0), capability=f"{major}.{minor}",
                     memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                     amp_auto=str(chosen).removeprefix("torch."))
    else:
        facts.update(gpu="none (CPU smoke run)")
    facts.update(lite0=importlib.util.find_spec("efficientnet_lite_pytorch") is not None,
                 chess=chess.as_posix() if chess else None)
    return facts


def verdicts(results: Sequence[Result]) -> list[str]:
    """The loader's images/s against what each model trained at: whether the loader limits the GPU."""
    loader = next((r.figures["loader_ips"] for r in results if "loader_ips" in r.figures), None)
    if loader is None:
        return []
    out = []
    for figures in (r.figures for r in results if "tlsync_ips" in r.figures):
        need = figures["tlsync_ips"]
        out.append(f"{figures['model']} trains {need:.1f} img/s: " +
                   (f"the LOADER LIMITS it by {need / loader:.1f}x" if loader < need else
                    f"{loader / need:.1f}x headroom"))
    return out


def section_body(facts: dict[str, Any], results: Sequence[Result]) -> str:
    failed = [r.name for r in results if r.ok is False]
    where = (f"On {facts.get('gpu')} (compute capability {facts.get('capability', '-')}, --amp auto: "
             f"{facts.get('amp_auto', '-')}; torch {facts.get('torch')}, torchvision {facts.get('torchvision')}, "
             f"CUDA {facts.get('cuda')}); Lite0 extra {'installed' if facts.get('lite0') else 'ABSENT'}; "
             f"models from random weights.")
    compared = verdicts(results)
    return (where + "\n\n" + "\n".join(f"- `{r.line()}`" for r in results)
            + ("\n\nLoader against the GPU: " + "; ".join(compared) + "." if compared else "")
            + f"\n\n{sum(r.ok is True for r in results)} of {len(results)} checks passed"
            + (f"; failed: {', '.join(failed)}." if failed else "."))


def write_section(results: Sequence[Result], command: str, facts: dict[str, Any] | None = None) -> None:
    update_section(SECTION, TITLE, section_body(facts or {}, results), command)


def write_out(out: Path, only: Sequence[str], facts: dict[str, Any], results: Sequence[Result], summary: str,
              command: str, smoke: bool) -> Path:
    """This call's JSON and section into ``out`` (created); BENCHMARKS.md too, unless a smoke run."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_check-{'-'.join(only)}.json"
    path.write_text(json.dumps({"command": command, "preflight": facts, "summary": summary, "smoke": smoke,
                                "results": [dataclasses.asdict(r) for r in results]}, indent=1))
    (out / "BENCHMARKS-gpu-check.md").write_text(f"`{command}`\n\n{section_body(facts, results)}\n")
    if not smoke:
        write_section(results, command, facts)
    return path


def merge(folders: Sequence[Path]) -> str:
    """BENCHMARKS.md's section from every ``gpu_check-*.json`` in ``folders``, checks in their usual order."""
    calls = [json.loads(p.read_text()) for folder in folders for p in sorted(Path(folder).glob("gpu_check-*.json"))]
    if not calls:
        raise SystemExit(f"gpu_check --merge: no gpu_check-*.json in {', '.join(map(str, folders))}")
    results = [Result(**r) for call in calls for r in call["results"]]
    order = {name: i for i, name in enumerate(CHECKS)}
    results.sort(key=lambda r: order.get(r.name.split()[0], len(order)))
    if any(call["smoke"] for call in calls):
        raise SystemExit("gpu_check --merge: smoke (--device cpu) results are not figures; merge GPU runs only")
    write_section(results, " ; ".join(call["command"] for call in calls), calls[0]["preflight"])
    return f"wrote the {SECTION} section of {BENCHMARKS_MD} from {len(calls)} call(s), {len(results)} result(s)"
