"""FIFOs, sockets, devices and folders where an export names a file: a bad item, never a hung pull.

Each case runs ``tlsync pull`` in a subprocess with a timeout, as a user would: before the
fix, opening a FIFO blocked forever, so a hang must fail the test rather than the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tlsync.testing import write_image

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs need a POSIX system")


def pull(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TLSYNC_HOME": str(home)}
    try:
        return subprocess.run([sys.executable, "-m", "tlsync", "pull", *args], env=env, capture_output=True,
                              text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tlsync pull {' '.join(args)} hung on a special file")


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def coco_folder(root: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    images = [{"id": i, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names, 1)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10]} for i in range(1, len(names) + 1)]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                     "categories": [{"id": 1, "name": "cat"}]}))
    return root


def test_fifo_image_in_coco_is_a_bad_item(tmp_path: Path) -> None:
    folder = coco_folder(tmp_path / "coco", ["good.png", "x.jpg"])
    write_image(folder / "good.png")
    os.mkfifo(folder / "x.jpg")

    failed = pull(tmp_path / "home", "--source", "coco", "--path", str(folder), "--dataset", "d")
    one_line_error(failed, "x.jpg", "FIFO")
    assert not (tmp_path / "home" / "datasets" / "d" / "1").exists()

    skipped = pull(tmp_path / "home", "--source", "coco", "--path", str(folder), "--dataset", "d",
                   "--on-error", "skip")
    assert skipped.returncode == 0, skipped.stderr
    assert "1 items" in skipped.stdout and "FIFO" in skipped.stdout + skipped.stderr


def test_device_folder_and_socket_named_as_images(tmp_path: Path) -> None:
    """A symlink to /dev/zero (allowed outside the root on purpose), a folder and a socket named .jpg."""
    folder = coco_folder(tmp_path / "coco", ["good.png", "zero.jpg", "dir.jpg", "sock.jpg"])
    write_image(folder / "good.png")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "dir.jpg").mkdir()
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(folder / "sock.jpg"))
    except OSError:  # a path too long for a socket name: the other three still run
        server.close()
        server = None
        (folder / "sock.jpg").write_bytes(b"not an image")
    try:
        result = pull(tmp_path / "home", "--source", "coco", "--path", str(folder), "--dataset", "d",
                      "--on-error", "skip", "--allow-outside-root")
    finally:
        if server is not None:
            server.close()
    assert result.returncode == 0, result.stderr
    out = result.stdout + result.stderr
    assert "1 items" in result.stdout
    assert "character device" in out and "a folder" in out


def test_fifo_label_file_and_fifo_data_yaml_in_yolo(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    for name in ("a", "b"):
        write_image(root / "train" / "images" / f"{name}.png", seed=len(name))
    (root / "train" / "labels").mkdir(parents=True)
    (root / "train" / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    os.mkfifo(root / "train" / "labels" / "b.txt")
    os.mkfifo(root / "train" / "images" / "c.png")  # a FIFO image, not silently passed over either
    (root / "data.yaml").write_text(yaml.safe_dump({"names": ["cat"], "train": "train/images"}))

    failed = pull(tmp_path / "home", "--source", "roboflow", "--path", str(root), "--dataset", "y")
    one_line_error(failed, "FIFO")
    skipped = pull(tmp_path / "home", "--source", "roboflow", "--path", str(root), "--dataset", "y",
                   "--on-error", "skip")
    assert skipped.returncode == 0, skipped.stderr
    assert "b.txt" in skipped.stdout + skipped.stderr and "c.png" in skipped.stdout + skipped.stderr

    (root / "data.yaml").unlink()
    os.mkfifo(root / "data.yaml")
    one_line_error(pull(tmp_path / "home", "--source", "roboflow", "--path", str(root), "--dataset", "y2"),
                   "data.yaml")


def test_fifo_voc_xml(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    write_image(root / "JPEGImages" / "a.png")
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.png</filename><object><name>cat</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
        "<xmax>30</xmax><ymax>20</ymax></bndbox></object></annotation>")
    os.mkfifo(root / "Annotations" / "b.xml")
    one_line_error(pull(tmp_path / "home", "--source", "roboflow", "--path", str(root), "--dataset", "v"),
                   "b.xml", "FIFO")
    skipped = pull(tmp_path / "home", "--source", "roboflow", "--path", str(root), "--dataset", "v",
                   "--on-error", "skip")
    assert skipped.returncode == 0 and "1 items" in skipped.stdout, skipped.stderr


def test_fifo_in_images_source_folder(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    write_image(pool / "a.png")
    os.mkfifo(pool / "b.jpg")
    one_line_error(pull(tmp_path / "home", "--source", "images", "--path", str(pool), "--dataset", "p"),
                   "b.jpg", "FIFO")
    skipped = pull(tmp_path / "home", "--source", "images", "--path", str(pool), "--dataset", "p",
                   "--on-error", "skip")
    assert skipped.returncode == 0 and "1 items" in skipped.stdout, skipped.stderr


def test_fifo_annotations_json_and_fifo_zip(tmp_path: Path) -> None:
    folder = tmp_path / "coco"
    write_image(folder / "a.png")
    os.mkfifo(folder / "instances.json")
    one_line_error(pull(tmp_path / "home", "--source", "coco", "--annotations", str(folder / "instances.json"),
                        "--dataset", "c"), "instances.json", "FIFO")
    os.mkfifo(tmp_path / "x.zip")
    one_line_error(pull(tmp_path / "home", "--source", "roboflow", "--path", str(tmp_path / "x.zip"),
                        "--dataset", "z"), "x.zip", "FIFO")


def test_fifo_exports_of_the_plugins(tmp_path: Path) -> None:
    """The CVAT and Label Studio plugins read their files through the same helper."""
    pytest.importorskip("tlsync_cvat")
    pytest.importorskip("tlsync_labelstudio")
    os.mkfifo(tmp_path / "annotations.xml")
    os.mkfifo(tmp_path / "export.json")
    env_home = tmp_path / "home"
    for source, name in (("cvat", "annotations.xml"), ("labelstudio", "export.json")):
        env = {**{k: v for k, v in os.environ.items() if k != "TLSYNC_LOAD_PLUGINS"}, "TLSYNC_HOME": str(env_home)}
        try:
            result = subprocess.run([sys.executable, "-m", "tlsync", "pull", "--source", source, "--path",
                                     str(tmp_path / name), "--dataset", source], env=env, capture_output=True,
                                    text=True, timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the {source} plugin hung on a FIFO")
        one_line_error(result, name, "FIFO")
