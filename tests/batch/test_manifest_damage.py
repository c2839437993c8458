"""A manifest edited by hand or cut short costs a redo of what it no longer describes, never more."""

from __future__ import annotations

import json

import pytest

from geoseg.batch import run_batch
from tests.batch.test_batch import assert_same_as_single_run, grid_work

pytestmark = pytest.mark.timeout(180)


def records(out):
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def test_truncated_and_hand_edited_manifests_resume_to_the_same_output(
    scene, tmp_path, cluster_address
):
    work = grid_work(tmp_path, scene, size=70)
    out = tmp_path / "out"
    first = run_batch(work, out, address=cluster_address)
    assert first.ok and first.regions == 16
    lines = (out / "manifest.jsonl").read_text().splitlines()
    regions = [r for r in map(json.loads, lines) if r["kind"] == "region"]
    # Hand edits: one region's outputs made garbage, another's checksum changed, a stray
    # line that is not JSON, and the file cut in the middle of its last region record.
    edited = []
    victims = {regions[0]["region"], regions[1]["region"], regions[-1]["region"]}
    for line in lines:
        rec = json.loads(line)
        if rec.get("region") == regions[0]["region"]:
            rec["outputs"] = "see the other file"
        elif rec.get("region") == regions[1]["region"]:
            rec["outputs"]["classes"]["sha256"] = "0" * 64
        if rec.get("region") == regions[-1]["region"]:
            edited.append(json.dumps(rec)[: len(line) // 2])  # torn: no newline after it
            break
        edited.append(json.dumps(rec))
        if rec["kind"] == "batch":
            edited.append("this line was typed by hand")
    (out / "manifest.jsonl").write_text("\n".join(edited))

    again = run_batch(work, out, address=cluster_address, resume=True)
    assert again.ok and not again.failed
    redone = set(again.computed) | set(again.vectorized)
    assert redone == victims  # exactly the regions the manifest no longer vouches for
    assert len(again.reused) == 16 - len(victims)
    assert_same_as_single_run(out, scene)
    # The manifest is whole again: one header, one record per region, the merge.
    kinds = [r["kind"] for r in records(out)]
    assert kinds.count("batch") == 1 and kinds.count("region") == 16 and kinds[-1] == "merge"


def test_a_manifest_cut_before_its_header_is_resumed_as_a_new_batch(
    scene, tmp_path, cluster_address
):
    work = grid_work(tmp_path, scene, size=70)
    out = tmp_path / "out"
    run_batch(work, out, address=cluster_address)
    (out / "manifest.jsonl").write_bytes(b'{"kind": "ba')
    again = run_batch(work, out, address=cluster_address, resume=True)
    assert again.ok and len(again.computed) == 16 and not again.reused
    assert_same_as_single_run(out, scene)
