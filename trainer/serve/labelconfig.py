"""What a Label Studio labelling config offers the model's boxes, and what it lacks.

The config is XML from the server (hostile like any input: parsed with defusedxml). Boxes need a
``RectangleLabels`` control whose ``toName`` is an ``Image`` object, and every class the run
predicts among its labels: a prediction naming a label the config lacks cannot be shown.
"""

from __future__ import annotations

from dataclasses import dataclass

from tlsync.errors import TlsyncError

MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class Target:
    """Where boxes go: the control (``from_name``), the image (``to_name``) and its task data field."""

    from_name: str
    to_name: str
    image_key: str


def read_config(config: object, classes: list[str]) -> Target:
    """The ``RectangleLabels`` that can show every class of the run; else an error saying exactly what is missing."""
    from xml.etree.ElementTree import Element

    import defusedxml.ElementTree as SafeXML
    from defusedxml import DefusedXmlException

    if not isinstance(config, str) or not config.strip():
        raise TlsyncError("the project has no labelling config (Settings > Labeling Interface)")
    if len(config.encode()) > MAX_CONFIG_BYTES:
        raise TlsyncError(f"the labelling config is over {MAX_CONFIG_BYTES:,} bytes; refused")
    try:
        root: Element = SafeXML.fromstring(config)
    except (SafeXML.ParseError, DefusedXmlException) as e:
        raise TlsyncError(f"the labelling config is not valid XML ({e})") from None
    images = {e.get("name"): (e.get("value") or "").lstrip("$") for e in root.iter() if e.tag == "Image"}
    controls = [e for e in root.iter() if e.tag == "RectangleLabels" and e.get("toName") in images]
    if not controls:
        raise TlsyncError("the labelling config has no RectangleLabels control on an Image; "
                          "boxes need one (e.g. the 'Object Detection with Bounding Boxes' template)")
    problems = []
    for control in controls:
        labels = {label.get("value") for label in control.iter("Label")}
        missing = [name for name in classes if name not in labels]
        if not missing:
            image = str(control.get("toName"))
            return Target(str(control.get("name")), image, images[image] or "image")
        problems.append(f"RectangleLabels '{control.get('name')}' lacks {', '.join(repr(m) for m in missing)}")
    raise TlsyncError(f"the labelling config cannot show this model's classes: {'; '.join(problems)} "
                      f"(the run's classes: {', '.join(classes)}); add them as <Label value=\"...\"/>")
