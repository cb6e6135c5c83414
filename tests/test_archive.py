"""The naming, rotation and read-only attach that backups and snapshots share."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

from storage import archive, sqlite
from storage.archive import ArchiveName, NameScheme, rotated_out

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
BACKUPS = NameScheme(prefix="memory", noun="backup", kinds=("nightly", "manual", "pre-restore"))
SNAPSHOTS = NameScheme(prefix="snapshot", noun="snapshot", kinds=("periodic", "manual", "pre-restore"))


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str


@pytest.mark.parametrize(
    ("scheme", "kind", "serial", "name"),
    [
        (BACKUPS, "nightly", 1, "memory-20261129T030000Z-nightly.db"),
        (BACKUPS, "pre-restore", 3, "memory-20261129T030000Z-pre-restore-3.db"),
        (SNAPSHOTS, "periodic", 1, "snapshot-20261129T030000Z-periodic.db"),
        (SNAPSHOTS, "manual", 12, "snapshot-20261129T030000Z-manual-12.db"),
    ],
    ids=["backup", "backup-serial", "snapshot", "snapshot-serial"],
)
def test_names_round_trip(scheme, kind, serial, name):
    assert scheme.name(kind, T0, serial) == name
    assert scheme.parse(name) == ArchiveName(kind, T0, serial)


def test_names_are_utc_and_other_schemes_names_are_not_parsed():
    two_hours_east = timezone(timedelta(hours=2))
    assert BACKUPS.name("manual", T0.astimezone(two_hours_east)) == "memory-20261129T030000Z-manual.db"
    assert BACKUPS.parse("snapshot-20261129T030000Z-periodic.db") is None
    assert SNAPSHOTS.parse("memory-20261129T030000Z-nightly.db") is None
    assert BACKUPS.parse("memory-20261129T030000Z-weekly.db") is None


def test_a_new_name_sorts_after_temporary_files_and_sidecars_of_its_second(tmp_path):
    (tmp_path / ".tmp-memory-20261129T030000Z-manual.db").touch()
    (tmp_path / "memory-20261129T030000Z-manual-2.db.json").touch()
    (tmp_path / "memory-20261129T030000Z-nightly-5.db").touch()  # another kind

    assert BACKUPS.free_name(tmp_path, "manual", T0) == "memory-20261129T030000Z-manual-2.db"
    assert BACKUPS.free_name(tmp_path, "manual", T0, sidecar_suffix=".json") == "memory-20261129T030000Z-manual-3.db"
    name, taken_at = BACKUPS.new_name(tmp_path, "nightly", T0 + timedelta(microseconds=700))
    assert (name, taken_at) == ("memory-20261129T030000Z-nightly-6.db", T0)
    with pytest.raises(ValueError, match="unknown backup kind 'weekly'"):
        BACKUPS.new_name(tmp_path, "weekly", T0)


def test_rotation_keeps_the_newest_of_each_kind_and_spares_the_protected():
    entries = [Entry(f"n{i}", "nightly") for i in range(4)]
    entries.insert(1, Entry("m0", "manual"))

    assert rotated_out(entries, kind="nightly", keep=2) == [Entry("n0", "nightly"), Entry("n1", "nightly")]
    assert rotated_out(entries, kind="nightly", keep=2, protect={"n0"}) == [Entry("n1", "nightly")]
    assert rotated_out(entries, kind="manual", keep=0) == [Entry("m0", "manual")]
    assert rotated_out(entries, kind="nightly", keep=9) == []


def test_attaching_a_file_leaves_it_as_it_was(tmp_path):
    path = tmp_path / "copy.db"
    conn = sqlite.connect(path)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.close()
    before = path.read_bytes()

    with archive.attached(path, "copy") as conn:
        assert conn.execute("SELECT x FROM copy.t").fetchall() == [(42,)]

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db"]
