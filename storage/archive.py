"""What backups and snapshots do alike with their folders: naming files, listing them, rotating them out, reading one.

Both keep dated files in a folder of their own, named so that names sort by
time and say their kind: `<prefix>-20261129T030000Z-<kind>[-<serial>].db`, in
UTC, with a serial from 2 on for a second file of a kind in the same second.
The suffix says the format: `.db` for SQLite files, `.pgdump` for the
PostgreSQL backend's backups, which may share the folder; a scheme lists,
numbers and rotates only the files with its own suffix.
A file is written under `TEMP_PREFIX` + its name and renamed into place.
What each keeps in its files, and how it checks them, stays in
`storage.backups` and `storage.snapshots`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

from storage import sqlite
from storage.files import is_regular_file

TEMP_PREFIX = ".tmp-"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


class ArchiveName(NamedTuple):
    """What a file's name says: its kind, when it was taken (UTC) and its serial in that second."""

    kind: str
    taken_at: datetime
    serial: int


@dataclass(frozen=True)
class NameScheme:
    """How one folder's files are named: `memory-…` backups, `snapshot-…` snapshots."""

    prefix: str  # "memory"
    noun: str  # "backup": in messages, and its plural names the folder
    kinds: tuple[str, ...]
    suffix: str = ".db"  # the file format; each scheme sees only its own files in a shared folder
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kinds = "|".join(self.kinds)
        suffix = re.escape(self.suffix)
        pattern = rf"^{self.prefix}-(?P<stamp>\d{{8}}T\d{{6}}Z)-(?P<kind>{kinds})(?:-(?P<serial>\d+))?{suffix}$"
        object.__setattr__(self, "pattern", re.compile(pattern))

    @property
    def folder_name(self) -> str:
        return f"{self.noun}s"

    def name(self, kind: str, taken_at: datetime, serial: int = 1) -> str:
        stamp = taken_at.astimezone(UTC).strftime(STAMP_FORMAT)
        serial_part = f"-{serial}" if serial > 1 else ""
        return f"{self.prefix}-{stamp}-{kind}{serial_part}{self.suffix}"

    def parse(self, name: str) -> ArchiveName | None:
        """(kind, taken_at, serial) for a file name of this scheme, or None if it is not one.

        A name of the right shape whose stamp is no real time (month 13) raises ValueError.
        """
        match = self.pattern.match(name)
        if match is None:
            return None
        taken_at = datetime.strptime(match["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
        return ArchiveName(match["kind"], taken_at, int(match["serial"] or 1))

    def new_name(
        self, folder: Path, kind: str, now: datetime | None, *, sidecar_suffix: str = ""
    ) -> tuple[str, datetime]:
        """A name for a new file of `kind` in `folder` (made if missing), and the time it records:
        `now` (or the clock's) in UTC, to the second. ValueError for a kind this scheme does not know."""
        if kind not in self.kinds:
            raise ValueError(f"unknown {self.noun} kind {kind!r}")
        folder.mkdir(parents=True, exist_ok=True)
        taken_at = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        return self.free_name(folder, kind, taken_at, sidecar_suffix=sidecar_suffix), taken_at

    def free_name(self, folder: Path, kind: str, taken_at: datetime, *, sidecar_suffix: str = "") -> str:
        """A new name that sorts after every file of `kind` taken in the same second.

        Temporary files count, and so do sidecars (`<name><sidecar_suffix>`) if
        the folder has them. Never a gap left by pruning: a name reused below a
        higher serial would sort as the oldest of its kind and be pruned as soon
        as it was written.
        """
        stamp = taken_at.astimezone(UTC).strftime(STAMP_FORMAT)
        serials = [0]
        for path in folder.iterdir():
            match = self.pattern.match(path.name.removeprefix(TEMP_PREFIX).removesuffix(sidecar_suffix))
            if match and match["kind"] == kind and match["stamp"] == stamp:
                serials.append(int(match["serial"] or 1))
        return self.name(kind, taken_at, max(serials) + 1)

    def files_in(self, folder: Path) -> Iterator[Path]:
        """The regular files in `folder` named like this scheme's, in the folder's order.

        A link (wherever it points), a folder or a pipe under such a name is
        never the bot's to read or delete: it is logged once and skipped.
        """
        for path in folder.iterdir():
            if self.pattern.match(path.name) and is_regular_file(path, folder=self.folder_name):
                yield path


class Rotated(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


RotatedT = TypeVar("RotatedT", bound=Rotated)


def rotated_out(entries: Sequence[RotatedT], *, kind: str, keep: int, protect: Collection[str] = ()) -> list[RotatedT]:
    """Of `entries` (oldest first), those of `kind` older than its newest `keep`, oldest first,
    except those named in `protect` (they wait for a later rotation).

    Each kind rotates on its own: one kind's files never push out another's.
    """
    of_kind = [entry for entry in entries if entry.kind == kind]
    return [entry for entry in of_kind[: max(0, len(of_kind) - keep)] if entry.name not in protect]


@contextlib.contextmanager
def attached(path: Path, alias: str) -> Iterator[sqlite.sqlite3.Connection]:
    """An in-memory connection with the database file at `path` ATTACHed as `alias`.

    For reading a file (or scrubbing it in place) without opening it directly:
    `storage.sqlite.connect` switches a database to WAL, which would rewrite its
    header and leave `-wal`/`-shm` files beside it. ATTACH creates a file that
    is missing, so the caller checks first that `path` is one it may read.
    """
    conn = sqlite.connect(":memory:", check_same_thread=False)
    try:
        conn.execute(f"ATTACH DATABASE ? AS {alias}", (str(path),))
        yield conn
    finally:
        conn.close()
