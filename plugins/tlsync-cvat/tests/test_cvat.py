"""The CVAT plugin against tlsync's contract kit, plus the bad exports users really send."""

from __future__ import annotations

from pathlib import Path

import pytest
import tlsync_cvat

from tlsync.errors import SourceError
from tlsync.pull import pull
from tlsync.splits import assign_split
from tlsync.testing import check_fingerprint, check_plugin, check_source, write_image

META = """<meta><task><labels>
  <label><name>car</name><type>rectangle</type></label>
  <label><name>person</name><type>any</type></label>
  <label><name>bike</name><type>any</type></label>
</labels></task></meta>"""


def write_export(folder: Path, images: str, meta: str = META) -> Path:
    """annotations.xml as CVAT's export zip lays it out, with images/ beside it."""
    for seed, name in enumerate(("a.jpg", "sub/b.png", "c.jpg")):
        write_image(folder / "images" / name, 80, 60, seed=seed)
    xml = folder / "annotations.xml"
    xml.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n'
                   f'<annotations><version>1.1</version>{meta}{images}</annotations>')
    return xml


GOOD = """
<image id="0" name="a.jpg" width="80" height="60" subset="Train">
  <box label="car" occluded="1" source="manual" xtl="10.5" ytl="5" xbr="30.5" ybr="25" z_order="0"/>
  <box label="person" occluded="0" xtl="40" ytl="10" xbr="80" ybr="60"/>
  <polygon label="car" points="1,1;5,1;5,5"/>
</image>
<image id="1" name="sub/b.png" width="80" height="60" subset="Validation">
  <box label="car" xtl="0" ytl="0" xbr="8" ybr="6" rotation="30"/>
  <points label="person" points="3,3"/>
</image>
<image id="2" name="c.jpg" width="80" height="60" subset="default"/>
"""


def test_export_keeps_the_contract_and_converts_corners_to_sizes(tmp_path, tlsync_store):
    checked = check_source(tlsync_cvat.CvatSource(), store=tlsync_store, path=write_export(tmp_path, GOOD))
    items = checked.by_id()
    assert list(items) == ["a.jpg", "sub/b.png", "c.jpg"]
    car, person = items["a.jpg"].annotations
    assert (car.label, car.x, car.y, car.width, car.height, car.metadata) == (
        "car", 10.5, 5, 20, 20, {"occluded": True})
    assert (person.x, person.y, person.width, person.height, person.metadata) == (40, 10, 40, 50, {})
    assert (items["a.jpg"].split, items["sub/b.png"].split) == ("train", "val")
    # subset "default" is no split: the core gives c.jpg the one its id hashes to, as for any source without one
    assert items["sub/b.png"].annotations == [] and items["c.jpg"].split == assign_split("c.jpg")
    assert checked.dataset.categories == ["car", "person", "bike"]  # the export's order, unused ones too
    assert checked.result.not_used == {"polygons": 1, "points": 1, "rotated boxes": 1}


def test_unchanged_export_is_not_read_again_and_an_edit_is(tmp_path, tlsync_store):
    xml = write_export(tmp_path, GOOD)

    def move_a_box():
        xml.write_text(xml.read_text().replace('xtl="40"', 'xtl="42"'))

    check_fingerprint(tlsync_cvat.CvatSource(), move_a_box, store=tlsync_store, path=xml)
    check_fingerprint(tlsync_cvat.CvatSource(), lambda: write_image(tmp_path / "images" / "c.jpg", 80, 60, seed=9),
                      store=tlsync_store, path=xml)


def test_plugin_registers_one_valid_source():
    assert list(check_plugin(tlsync_cvat)) == ["cvat"]


@pytest.mark.parametrize("box, message", [
    ('<box label="car" xtl="30" ytl="5" xbr="10" ybr="25"/>', "box 0 'car' has no area (xtl=30 xbr=10 ytl=5 ybr=25)"),
    ('<box label="car" xtl="ten" ytl="5" xbr="30" ybr="25"/>',
     "box 0 'car': xtl, ytl, xbr, ybr and rotation must be numbers"),
    ('<box label="truck" xtl="1" ytl="5" xbr="30" ybr="25"/>',
     "box 0: label 'truck' is not one of the export's <labels>"),
])
def test_a_bad_box_names_file_image_and_box_and_can_be_skipped(tmp_path, tlsync_store, box, message):
    xml = write_export(tmp_path, f'<image id="0" name="a.jpg" width="80" height="60">{box}'
                                 f'<box label="car" xtl="1" ytl="1" xbr="9" ybr="9"/></image>')
    with pytest.raises(SourceError) as failed:
        pull(tlsync_store, tlsync_cvat.CvatSource(), {"path": xml}, "bad")
    assert str(failed.value) == f"{xml}: image 'a.jpg': {message}"
    result = pull(tlsync_store, tlsync_cvat.CvatSource(), {"path": xml}, "bad", on_error="skip")
    assert (result.items, result.boxes, sum(result.skipped.values())) == (1, 1, 1)


@pytest.mark.parametrize("text, message", [
    ("<annotations><image name='a.jpg'>", "not valid XML"),
    ('<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><annotations>&b;</annotations>', "refused unsafe XML"),
    ("<dataset/>", "root element is <dataset>, not <annotations>"),
    ("<annotations><track id='0' label='car'/></annotations>", "'CVAT for video' export"),
])
def test_malformed_unsafe_or_foreign_xml_is_refused_with_the_file_named(tmp_path, tlsync_store, text, message):
    xml = tmp_path / "annotations.xml"
    xml.write_text(text)
    with pytest.raises(SourceError, match=message) as failed:
        pull(tlsync_store, tlsync_cvat.CvatSource(), {"path": xml}, "bad")
    assert str(failed.value).startswith(str(xml))


def test_an_image_name_cannot_escape_the_images_folder(tmp_path, tlsync_store):
    xml = write_export(tmp_path, '<image id="0" name="../../etc/a.jpg" width="80" height="60"/>')
    with pytest.raises(SourceError, match="image '../../etc/a.jpg': attribute 'name' must be a relative file name"):
        pull(tlsync_store, tlsync_cvat.CvatSource(), {"path": xml}, "bad")


def test_cli_lists_and_pulls_the_export(tmp_path, tlsync_plugins, run_cli):
    tlsync_plugins(tlsync_cvat)
    listed = run_cli("sources")
    assert "cvat: CVAT for images 1.1" in listed.stdout and "--images" in listed.stdout
    xml = write_export(tmp_path, GOOD)
    pulled = run_cli("pull", "--source", "cvat", "--path", xml, "--dataset", "parts")
    assert pulled.exit_code == 0, pulled.stderr
    assert "3 items, 2 boxes, 3 classes" in pulled.stdout and "new version parts@1" in pulled.stdout
    missing = run_cli("pull", "--source", "cvat", "--path", xml, "--images", tmp_path / "nowhere", "--dataset", "parts")
    assert missing.exit_code == 2 and "'--images'" in missing.stderr


def test_images_named_outside_the_export_are_refused(tmp_path):
    """The kit plants a symlink leading out, a '..' name and an absolute name; each must be refused."""
    from tlsync.testing import check_path_escapes

    def export(folder: Path, name: str) -> dict:
        xml = folder / "annotations.xml"
        xml.write_text(f'<annotations><version>1.1</version>{META}<image id="0" name="{name}" width="64" '
                       f'height="48"><box label="car" xtl="1" ytl="1" xbr="9" ybr="9"/></image></annotations>')
        return {"path": xml}

    check_path_escapes(tlsync_cvat.CvatSource(), export, images="images")
