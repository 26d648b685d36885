"""``tlsync select --target nucleus``: the selected items become a Nucleus slice.

Requests are the official client's: ``Dataset.create_slice`` (``POST dataset/{id}/create_slice``
with ``{"name", "reference_ids"}``) and ``Slice.append`` (``POST slice/{id}/append``), at most
10,000 reference ids each. A slice of the same name that already exists is completed rather
than duplicated: its members are read back and only the missing ids are appended, which is
what makes a re-run after a failure send only what is missing.
"""

from __future__ import annotations

from typing import Any

from tlsync.errors import TlsyncError

from .nucleus_api import MAX_SLICE_IDS_PER_REQUEST, NucleusAPI


def find_slice(api: NucleusAPI, dataset_id: str, name: str) -> str | None:
    """The id of the dataset's slice called ``name``, if there is one."""
    for slice_id in api.slice_ids(dataset_id):
        if api.info("slice", slice_id).get("name") == name:
            return slice_id
    return None


def slice_members(api: NucleusAPI, slice_id: str) -> set[str]:
    rows = api.export_rows("slice", slice_id, MAX_SLICE_IDS_PER_REQUEST)
    return {str((r.get("item") or {}).get("reference_id") or (r.get("item") or {}).get("ref_id"))
            for r in rows if isinstance(r, dict)}


def send_to_slice(api: NucleusAPI, dataset_id: str, name: str, reference_ids: list[str],
                  chunk: int = MAX_SLICE_IDS_PER_REQUEST) -> dict[str, Any]:
    """Make slice ``name`` hold ``reference_ids`` (creating or completing it); a summary of what was sent."""
    api.info("dataset", dataset_id)  # a wrong id fails here, with nothing sent
    slice_id = find_slice(api, dataset_id, name)
    present = slice_members(api, slice_id) if slice_id else set()
    missing = [ref for ref in reference_ids if ref not in present]
    sent, requests = 0, 0
    try:
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            if slice_id is None:
                slice_id = api.create_slice(dataset_id, name, part)
            else:
                api.append_to_slice(slice_id, part)
            sent += len(part)
            requests += 1
    except TlsyncError as e:
        where = f"slice {slice_id} '{name}'" if slice_id else f"slice '{name}' (not created)"
        raise TlsyncError(f"Nucleus {where}: sent {sent} of the {len(missing)} missing items, "
                          f"{len(missing) - sent} not sent: {e}") from None
    return {"slice_id": slice_id, "slice_name": name, "items": len(reference_ids), "sent": sent,
            "already_there": len(reference_ids) - len(missing), "requests": requests}
