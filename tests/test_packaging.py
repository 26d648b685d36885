"""A real wheel build: everything under the tlsync namespace, and it runs from the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_one_namespace_and_works(tmp_path: Path):
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheel = next(tmp_path.glob("tlsync-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"tlsync"}, tops
    for needed in ("tlsync/cli.py", "tlsync/hookspecs.py", "tlsync/connectors/coco.py",
                   "tlsync/connectors/synthetic.py", "tlsync/trainer/__init__.py", "tlsync/testing/__init__.py"):
        assert needed in names, needed
    assert not any(n.startswith(("trainer/", "connectors/", "plugins/", "tests/")) for n in names)
    assert "tlsync/py.typed" in names  # PEP 561: plugins type-check against tlsync's hints
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "tlsync = tlsync.cli:main" in entry_points
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert_torch_floor(metadata)

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    code = (f"import sys; sys.path.insert(0, {str(target)!r})\n"
            "import tlsync.connectors.coco as c; assert c.__file__.startswith(sys.path[0]), c.__file__\n"
            "from tlsync import hookimpl, Source, Item, Box\n"
            "from tlsync.cli import main; main(['sources'])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"TLSYNC_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "coco:" in run.stdout and "synthetic:" in run.stdout


def assert_torch_floor(metadata: str) -> None:
    """The wheel's ``Requires-Dist`` floors: torch 2.3 is the first with ``torch.amp.GradScaler("cuda")``, which
    the training loop uses, so an install that resolves an older torch would fail on the first GPU step."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    requires = {r.name: r for r in (Requirement(line.split(":", 1)[1].strip()) for line in metadata.splitlines()
                                    if line.startswith("Requires-Dist:"))}
    for name, floor, below in (("torch", "2.3", "2.2.2"), ("torchvision", "0.18", "0.17.2")):
        lowest = [Version(s.version) for s in requires[name].specifier if s.operator == ">="]
        assert lowest and min(lowest) >= Version(floor), f"{name}: {requires[name]} allows below {floor}"
        assert not requires[name].specifier.contains(below), f"{name}: {requires[name]} allows {below}"
