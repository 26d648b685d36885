"""The trainer's layout: packages by capability behind a lazy public face (issue 21).

A newcomer finds a capability by its package's name, and code outside the trainer imports
from ``tlsync.trainer`` alone; these tests keep both true as the trainer grows.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tlsync.trainer as face

ROOT = Path(__file__).resolve().parents[1]


def test_the_trainer_root_holds_only_packages_and_the_face() -> None:
    loose = sorted(p.name for p in (ROOT / "trainer").glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules in trainer/'s root belong in a capability package: {loose}"
    packages = sorted(p.name for p in (ROOT / "trainer").iterdir() if (p / "__init__.py").is_file())
    rooms = ("commands", "training", "distributed", "models", "evaluation", "deploy", "select", "curve", "trackers")
    assert set(rooms) <= set(packages)


def test_every_package_is_in_the_wheel_list() -> None:
    """``pyproject.toml`` names packages explicitly (three folders map onto one namespace): a
    package left out would be missing from the wheel while the editable install still worked."""
    block = re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    assert block, "pyproject.toml lists no packages"
    listed = set(re.findall(r'"([\w.]+)"', block.group(1)))
    found = {"tlsync.trainer." + ".".join(p.parent.relative_to(ROOT / "trainer").parts)
             for p in (ROOT / "trainer").rglob("__init__.py") if p.parent != ROOT / "trainer"}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_the_public_face_resolves_every_name_from_its_module() -> None:
    assert face.__all__ == sorted(face.PUBLIC)
    for name, module in face.PUBLIC.items():
        value = getattr(face, name)
        assert value.__module__ == f"tlsync.trainer.{module}", (name, value.__module__)


def test_importing_the_face_imports_no_torch_until_a_name_is_used() -> None:
    code = ("import sys, tlsync.trainer as t\n"
            "assert 'torch' not in sys.modules, 'import tlsync.trainer imported torch'\n"
            "t.train\n"
            "assert 'torch' in sys.modules\n"
            "try:\n    t.no_such_name\nexcept AttributeError as e:\n    print(e)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "has no attribute 'no_such_name'" in run.stdout
