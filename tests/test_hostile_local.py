"""Hostile local input, each built here in a temp folder and fed to the real CLI.

What every case checks is what a user relies on: the pull either refuses with one line
naming the file and the field/path (exit 1, no dataset version, none of the outside bytes
in the store), or, under ``--on-error skip``, counts the bad item and keeps the good ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
import yaml

from tlsync.store import Store
from tlsync.testing import write_image


def coco_folder(folder: Path, names: list[str], categories: tuple[str, ...] = ("cat",), write: bool = True) -> Path:
    """A COCO export in ``folder``: one image per name (written when it is a plain name), one box each."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, name in enumerate(names, 1):
        if write and "/" not in name:
            write_image(folder / name, seed=i)
        images.append({"id": i, "file_name": name, "width": 64, "height": 48})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 20, 20]})
    cats = [{"id": n, "name": c} for n, c in enumerate(categories, 1)]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": cats}))
    return folder


def secret_image(tmp_path: Path) -> tuple[Path, str]:
    path = write_image(tmp_path / "private" / "secret.png", seed=77)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def assert_refused(result, *expected: str) -> str:
    assert result.exit_code == 1, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
    for text in expected:
        assert text in err, err
    return err


def assert_nothing_stored(home: Path, digest: str | None = None) -> None:
    assert Store(home).dataset_names() == [], "no dataset version may be published"
    if digest:
        assert not [p for p in (home / "images").rglob("*") if p.name.startswith(digest)], "outside bytes stored"


# -- 1. paths stay inside the export ---------------------------------------------------------

@pytest.mark.parametrize("how", ["relative", "absolute", "symlink"])
def test_coco_file_name_outside_the_folder_is_refused(how, tmp_path, run_cli, isolated_home):
    secret, digest = secret_image(tmp_path)
    folder = tmp_path / "export"
    name = {"relative": "../private/secret.png", "absolute": str(secret), "symlink": "link.png"}[how]
    coco_folder(folder, ["ok.png", name], write=True)
    if how == "symlink":
        (folder / "link.png").unlink()
        (folder / "link.png").symlink_to(secret)
    result = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "d", "--on-error", "skip")
    assert_refused(result, str(folder / "instances.json"), "images[1] field 'file_name'",
                   "lies outside the export folder", "--allow-outside-root")
    assert_nothing_stored(isolated_home, digest)


def stored_hashes(home: Path, dataset: str) -> dict[str, str]:
    """``{item id: image sha256}`` of the dataset's latest version."""
    return {item.id: item.image.sha256 for item in Store(home).open(dataset).items()}


def test_allow_outside_root_lets_a_folder_point_elsewhere(tmp_path, run_cli, isolated_home):
    secret, digest = secret_image(tmp_path)
    folder = coco_folder(tmp_path / "export", ["ok.png", str(secret)])
    result = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "d", "--allow-outside-root")
    assert result.exit_code == 0, result.stderr
    hashes = stored_hashes(isolated_home, "d")  # both images, the outside one byte for byte
    assert sorted(hashes.values()) == sorted([hashlib.sha256((folder / "ok.png").read_bytes()).hexdigest(), digest])


def test_coco_annotations_file_with_images_dir_keeps_to_the_images_dir(tmp_path, run_cli, isolated_home):
    """With --annotations FILE --images DIR the root is DIR: a file beside the JSON is outside."""
    folder = coco_folder(tmp_path / "export", ["beside.png"])
    write_image(tmp_path / "export" / "pics" / "ok.png")
    data = json.loads((folder / "instances.json").read_text())
    data["images"][0]["file_name"] = "../beside.png"
    (folder / "instances.json").write_text(json.dumps(data))
    result = run_cli("pull", "--source", "coco", "--annotations", folder / "instances.json",
                     "--images", folder / "pics", "--dataset", "d")
    assert_refused(result, "images[0] field 'file_name'", f"lies outside the export folder {folder / 'pics'}")
    assert_nothing_stored(isolated_home)


def yolo_export(root: Path, config: dict | None = None) -> Path:
    for split in ("train", "valid"):
        write_image(root / split / "images" / f"{split}.png", seed=len(split))
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        (root / split / "labels" / f"{split}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    config = config or {"names": ["cat"], "nc": 1, "train": "../train/images", "val": "../valid/images"}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root


def outside_split(tmp_path: Path) -> Path:
    images = tmp_path / "private" / "images"
    write_image(images / "secret.png", seed=5)
    return images


def test_yolo_roboflow_dotdot_convention_still_resolves_inside(tmp_path, run_cli, isolated_home):
    root = yolo_export(tmp_path / "export")
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "d")
    assert result.exit_code == 0, result.stderr
    items = list(Store(isolated_home).open("d").items())  # each split's image, from inside the export, in its split
    assert sorted((i.split, i.image.sha256) for i in items) == sorted(
        (split, hashlib.sha256((root / folder / "images" / f"{folder}.png").read_bytes()).hexdigest())
        for split, folder in (("train", "train"), ("val", "valid")))


@pytest.mark.parametrize("key, value", [
    ("train", "ABSOLUTE"),                 # an absolute folder elsewhere
    ("val", "../private/images"),          # climbs out to a sibling, and nothing inside has that name
    ("path", "../private"),                # path: moves the base outside
])
def test_yolo_data_yaml_pointing_outside_is_refused(key, value, tmp_path, run_cli, isolated_home):
    outside = outside_split(tmp_path)
    config = {"names": ["cat"], "train": "../train/images", "val": "../valid/images"}
    if key == "path":
        config.update(path=value, train="images")
        (tmp_path / "export" / "train").mkdir(parents=True)
    else:
        config[key] = str(outside) if value == "ABSOLUTE" else value
    root = tmp_path / "export"
    yolo_export(root, config)
    if key == "path":
        import shutil
        shutil.rmtree(root / "train")  # only the outside "images" folder matches train: images
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "d")
    assert_refused(result, str(root / "data.yaml"), "lies outside the export folder")
    assert_nothing_stored(isolated_home, hashlib.sha256((outside / "secret.png").read_bytes()).hexdigest())


def test_yolo_symlinked_image_is_refused(tmp_path, run_cli, isolated_home):
    secret, digest = secret_image(tmp_path)
    root = yolo_export(tmp_path / "export")
    (root / "train" / "images" / "evil.png").symlink_to(secret)
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "d", "--on-error", "skip")
    assert_refused(result, "evil.png", f"-> {secret}", "lies outside the export folder")
    assert_nothing_stored(isolated_home, digest)


def test_voc_symlinked_image_folder_is_refused(tmp_path, run_cli, isolated_home):
    secret, digest = secret_image(tmp_path)
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").symlink_to(secret.parent, target_is_directory=True)
    (root / "Annotations" / "secret.xml").write_text(
        "<annotation><filename>secret.png</filename><object><name>cat</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "d")
    assert_refused(result, "image folder", "lies outside the export folder")
    assert_nothing_stored(isolated_home, digest)


def zip_folder(folder: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder).as_posix())
    return out


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_the_same_escapes_inside_a_zip_are_refused_and_cannot_be_allowed(how, tmp_path, run_cli, isolated_home):
    secret, digest = secret_image(tmp_path)
    folder = tmp_path / "export"
    coco_folder(folder, ["ok.png", "../../../../../../../../.." + str(secret) if how == "relative" else str(secret)])
    (folder / "instances.json").rename(folder / "_annotations.coco.json")
    archive = zip_folder(folder, tmp_path / "export.zip")
    result = run_cli("pull", "--source", "roboflow", "--path", archive, "--dataset", "d")
    assert_refused(result, "field 'file_name'", "lies outside the export folder",
                   "an archive or download may only refer to its own files")
    assert_nothing_stored(isolated_home, digest)
    allowed = run_cli("pull", "--source", "roboflow", "--path", archive, "--dataset", "d", "--allow-outside-root")
    assert_refused(allowed, "--allow-outside-root applies to export folders only")


# -- 4/5. a bad image is one bad item -----------------------------------------------------

def bomb_png(path: Path, side: int = 30000) -> Path:
    """A 100-byte PNG whose header declares side x side pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path: Path) -> Path:
    import random

    from PIL import Image

    rng = random.Random(0)
    Image.frombytes("RGB", (160, 120), bytes(rng.getrandbits(8) for _ in range(160 * 120 * 3))).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("bad, message", [
    (lambda p: bomb_png(p / "bad.png"), "not a readable image (declares 900 MP, limit 179 MP"),
    (lambda p: truncated_jpeg(p / "bad.png"), "truncated"),
])
def test_bomb_or_truncated_image_in_coco_folder_is_an_error_or_a_counted_skip(bad, message, tmp_path, run_cli,
                                                                              isolated_home):
    folder = coco_folder(tmp_path / "export", ["ok.png", "bad.png"])
    bad(folder)
    failed = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "d")
    assert_refused(failed, "item 'bad.png'", message)
    assert_nothing_stored(isolated_home)
    skipped = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "d", "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.stderr
    assert "1 items" in skipped.stdout and "skipped 1:" in skipped.stdout and message in skipped.stdout


def test_bomb_in_a_yolo_export_is_a_counted_skip(tmp_path, run_cli):
    root = yolo_export(tmp_path / "export")
    bomb_png(root / "train" / "images" / "bomb.png")
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "d", "--on-error", "skip")
    assert result.exit_code == 0, result.stderr
    assert "2 items" in result.stdout and "declares 900 MP" in result.stdout


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["images"][0].update(id=[1, 2]), "images[0] field 'id' must be an integer or a string (got list)"),
    (lambda d: d["images"][0].update(file_name="ok\u0000.png"), "images[0] field 'file_name' is empty or holds a NUL"),
    (lambda d: d["annotations"][0].update(image_id={"a": 1}), "annotation 1: field 'image_id' must be an integer"),
])
def test_coco_ids_that_are_not_ids_and_nul_names_name_the_file_and_field(mutate, message, tmp_path, run_cli):
    folder = coco_folder(tmp_path / "export", ["ok.png"])
    data = json.loads((folder / "instances.json").read_text())
    mutate(data)
    (folder / "instances.json").write_text(json.dumps(data))
    result = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "d")
    assert_refused(result, str(folder / "instances.json"), message)


@pytest.mark.parametrize("ratios", ["nan,1,1", "inf,0,0", "nan,nan,nan"])
def test_split_ratios_that_are_not_finite_are_refused(ratios, tmp_path, run_cli):
    folder = coco_folder(tmp_path / "export", ["ok.png"])
    result = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "d", "--split-ratios", ratios)
    assert_refused(result, f"--split-ratios '{ratios}'", "finite")


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, run_cli):
    root = yolo_export(tmp_path / "export")
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(8)]
    (root / "data.yaml").write_text("names: [cat]\n" + "\n".join(levels) + "\ntrain: *i\nval: ../valid/images\n")
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "d")
    assert_refused(result, str(root / "data.yaml"), "aliases expand to more than")


def test_split_entry_that_is_not_a_folder_name_is_refused_unread(tmp_path, run_cli):
    root = yolo_export(tmp_path / "export", {"names": ["cat"], "train": [["../train/images"]], "val": 3})
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "d")
    assert_refused(result, "'train' must be a folder name or a list of folder names (got list of 1)")


# -- 7. archives, terminal, exports, reports ----------------------------------------------

def many_entries_zip(path: Path, n: int) -> Path:
    """A valid zip of ``n`` empty files, written directly (zipfile takes seconds for 50,000)."""
    local, central = bytearray(), bytearray()
    for i in range(n):
        name = f"e/{i}.txt".encode()
        offset = len(local)
        local += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0,
                               0o100644 << 16, offset) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), len(local), 0)
    path.write_bytes(bytes(local + central) + end)
    return path


def test_zip_with_too_many_entries_is_refused_before_extraction(tmp_path, run_cli, isolated_home, monkeypatch):
    archive = many_entries_zip(tmp_path / "many.zip", 50_000)
    result = run_cli("pull", "--source", "roboflow", "--path", archive, "--dataset", "d",
                     "--max-extract-entries", "10000")
    assert_refused(result, "holds 50,000 entries, more than the 10,000 limit", "--max-extract-entries")
    assert not list((isolated_home / "cache").rglob("*.txt")), "nothing may be extracted"
    monkeypatch.setenv("TLSYNC_MAX_EXTRACT_ENTRIES", "20000")
    result = run_cli("pull", "--source", "roboflow", "--path", archive, "--dataset", "d")
    assert_refused(result, "more than the 20,000 limit", "TLSYNC_MAX_EXTRACT_ENTRIES")


def test_control_characters_in_class_names_never_reach_the_terminal(tmp_path, run_cli):
    evil = "\x1b]0;owned\x07\x1b[2Jcat\u202e"
    folder = coco_folder(tmp_path / "export", ["ok.png"], categories=(evil,))
    pulled = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "d")
    assert pulled.exit_code == 0, pulled.stderr
    shown = run_cli("datasets", "show", "d")
    assert shown.exit_code == 0, shown.stderr
    # click itself drops CSI sequences (\x1b[2J) off a terminal; the rest is shown, escaped.
    assert "\\x1b]0;owned\\x07" in shown.stdout and "cat\\u202e" in shown.stdout
    data = json.loads((folder / "instances.json").read_text())
    data["categories"].append({"id": 2, "name": evil})  # an error message quoting the name
    (folder / "instances.json").write_text(json.dumps(data))
    failed = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "d")
    assert failed.exit_code == 1 and "\\x1b]0;owned" in failed.stderr
    for text in (pulled.output, shown.output, failed.output):
        assert not any(c in text for c in "\x1b\x07\u202e"), repr(text)


def test_exported_folders_get_the_users_umask(tmp_path, run_cli):
    folder = coco_folder(tmp_path / "export", ["ok.png"])
    assert run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "d").exit_code == 0
    old = os.umask(0o022)
    try:
        result = run_cli("export", "--dataset", "d", "--out", tmp_path / "out")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "annotations.json").stat().st_mode) == 0o644


def test_the_pixel_limit_is_configurable(tmp_path, run_cli, monkeypatch):
    folder = coco_folder(tmp_path / "export", ["ok.png"])
    monkeypatch.setenv("TLSYNC_MAX_IMAGE_PIXELS", "1000")
    result = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "d")
    assert_refused(result, "item 'ok.png'", "declares 64x48 = 3,072 pixels, limit 1,000 pixels",
                   "TLSYNC_MAX_IMAGE_PIXELS")


@pytest.mark.parametrize("progressive", [False, True])
def test_a_whole_jpeg_passes_even_with_data_after_it_and_a_cut_one_does_not(progressive, tmp_path):
    """Motion photos append a video after EOI; that is a whole image. Any cut before EOI is not."""
    import random

    from PIL import Image

    from tlsync.errors import TlsyncError
    from tlsync.images import check_complete_image

    rng = random.Random(1)
    path = tmp_path / "photo.jpg"
    Image.frombytes("RGB", (200, 150), bytes(rng.getrandbits(8) for _ in range(200 * 150 * 3))).save(
        path, progressive=progressive)
    whole = path.read_bytes()
    path.write_bytes(whole + b"\0" * 100_000)
    assert check_complete_image(path) == (200, 150, ".jpg")
    for cut in (len(whole) - 2, len(whole) * 3 // 4, len(whole) // 3):
        path.write_bytes(whole[:cut])
        with pytest.raises(TlsyncError, match="not a readable image"):
            check_complete_image(path)
