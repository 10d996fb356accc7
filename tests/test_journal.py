"""The batch journal: fingerprints, what counts as done, torn lines, the output-folder lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from geoseg.batch.journal import (
    JOURNAL_NAME,
    Journal,
    JournalEntry,
    batch_lock,
    fingerprint,
    params_digest,
)
from geoseg.errors import UserInputError

MIB = 1 << 20


def done_entry(scene: Path, outputs: list[Path], **changes: str) -> JournalEntry:
    fields = {"fingerprint": fingerprint(scene), "model_checksum": "sha256:m", "params": "p1"}
    fields.update(changes)
    return JournalEntry(
        str(scene),
        "done",
        fields["fingerprint"],
        fields["model_checksum"],
        fields["params"],
        outputs=tuple(map(str, outputs)),
        counts=(("building", 2),),
        n_tiles=4,
        seconds=1.5,
    )


def test_fingerprint_follows_content_size_and_mtime(tmp_path: Path) -> None:
    path = tmp_path / "a.tif"
    path.write_bytes(b"x" * (3 * MIB))
    first = fingerprint(path)
    assert first == fingerprint(path)
    stat = path.stat()

    data = bytearray(path.read_bytes())
    data[-10] ^= 1  # the last MiB is hashed: a change there is seen even at the same mtime
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint(path) != first

    touched = fingerprint(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert fingerprint(path) != touched
    assert fingerprint(tmp_path / "nope.tif") == "missing"


def test_params_digest_is_stable_and_order_free() -> None:
    assert params_digest({"a": 1, "b": [1, 2]}) == params_digest({"b": [1, 2], "a": 1})
    assert params_digest({"a": 1}) != params_digest({"a": 2})


def test_done_needs_same_input_model_params_and_outputs(tmp_path: Path) -> None:
    scene, output = tmp_path / "s.tif", tmp_path / "s.gpkg"
    scene.write_bytes(b"scene")
    output.write_bytes(b"gpkg")
    journal = Journal(tmp_path)
    journal.record(done_entry(scene, [output]))
    same = {"fingerprint": fingerprint(scene), "model_checksum": "sha256:m", "params": "p1"}
    assert journal.is_done(scene, **same)
    assert not journal.is_done(scene, **{**same, "fingerprint": "other"})
    assert not journal.is_done(scene, **{**same, "model_checksum": "sha256:other"})
    assert not journal.is_done(scene, **{**same, "params": "p2"})
    output.unlink()
    assert not journal.is_done(scene, **same)  # an output removed by hand: redone
    assert not journal.is_done(tmp_path / "never.tif", **same)


def test_last_line_wins_and_survives_reopening(tmp_path: Path) -> None:
    scene, output = tmp_path / "s.tif", tmp_path / "s.gpkg"
    scene.write_bytes(b"scene")
    output.write_bytes(b"gpkg")
    journal = Journal(tmp_path)
    journal.record(JournalEntry(str(scene), "failed", "f", "", "p1", error="boom"))
    journal.record(done_entry(scene, [output]))
    reopened = Journal(tmp_path)
    entry = reopened.last(scene)
    assert entry is not None and entry.status == "done"
    assert dict(entry.counts) == {"building": 2} and entry.n_tiles == 4
    lines = (tmp_path / JOURNAL_NAME).read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["failed", "done"]
    assert json.loads(lines[0])["error"] == "boom"


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    scene, output = tmp_path / "s.tif", tmp_path / "s.gpkg"
    scene.write_bytes(b"scene")
    output.write_bytes(b"gpkg")
    Journal(tmp_path).record(done_entry(scene, [output]))
    with open(tmp_path / JOURNAL_NAME, "a") as f:
        f.write('{"scene": "' + str(scene) + '", "status": "fai')  # killed mid-write
    entry = Journal(tmp_path).last(scene)
    assert entry is not None and entry.status == "done"


def test_one_batch_at_a_time_per_output_folder(tmp_path: Path) -> None:
    with batch_lock(tmp_path / "out"):
        with (
            pytest.raises(UserInputError, match="another geoseg batch"),
            batch_lock(tmp_path / "out"),
        ):
            pass
        with batch_lock(tmp_path / "elsewhere"):
            pass
    with batch_lock(tmp_path / "out"):  # released
        pass


def test_a_scene_left_writing_is_not_done(tmp_path: Path) -> None:
    scene, output = tmp_path / "s.tif", tmp_path / "s.gpkg"
    scene.write_bytes(b"scene")
    output.write_bytes(b"gpkg")
    journal = Journal(tmp_path)
    journal.record(done_entry(scene, [output]))
    # a rerun with other parameters was killed while replacing the outputs
    journal.record(JournalEntry(str(scene), "writing", fingerprint(scene), "sha256:m", "p2"))
    same = {"fingerprint": fingerprint(scene), "model_checksum": "sha256:m", "params": "p1"}
    assert not Journal(tmp_path).is_done(scene, **same)


def test_outputs_are_recorded_relative_to_the_folder(tmp_path: Path) -> None:
    scene, output = tmp_path / "s.tif", tmp_path / "out" / "s.gpkg"
    scene.write_bytes(b"scene")
    output.parent.mkdir()
    output.write_bytes(b"gpkg")
    Journal(tmp_path / "out").record(done_entry(scene, [output]))
    line = json.loads((tmp_path / "out" / JOURNAL_NAME).read_text())
    assert line["outputs"] == ["s.gpkg"]
    (tmp_path / "out").rename(tmp_path / "moved")
    journal = Journal(tmp_path / "moved")
    same = {"fingerprint": fingerprint(scene), "model_checksum": "sha256:m", "params": "p1"}
    assert journal.is_done(scene, **same)
    entry = journal.last(scene)
    assert entry is not None and journal.output_paths(entry) == [tmp_path / "moved" / "s.gpkg"]
