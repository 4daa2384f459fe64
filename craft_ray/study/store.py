"""The readers' answers: an append-only SQLite table in WAL mode, in the study directory.

Why SQLite (WAL) rather than one JSONL file per reader: the app runs as several Serve replicas (separate
processes) and a reader may have two tabs open, so "is this pair answered already?" and "append
the answer" must be one atomic step across processes. A `BEGIN IMMEDIATE` transaction gives that
(writers queue on the database lock, `busy_timeout` waits), a UNIQUE (reader, pair, revision)
constraint backs it up, and `synchronous=FULL` makes a committed answer survive a crash or a
restart of the app. WAL lets the analysis read while readers write. Triggers refuse UPDATE and
DELETE, so the table only grows: changing an answer appends a new revision, the latest counts.

SQLite locking needs the study directory on a local disk of the one node that runs the replicas
(not NFS, not several nodes).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from craft_ray.errors import StudyError

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reader TEXT NOT NULL,
    pair_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'none')),
    wrong_left TEXT NOT NULL,
    wrong_right TEXT NOT NULL,
    time_ms INTEGER NOT NULL CHECK (time_ms >= 0),
    answered_at TEXT NOT NULL,
    UNIQUE (reader, pair_id, revision)
);
CREATE TRIGGER IF NOT EXISTS answers_no_update BEFORE UPDATE ON answers
    BEGIN SELECT RAISE(ABORT, 'answers are append-only'); END;
CREATE TRIGGER IF NOT EXISTS answers_no_delete BEFORE DELETE ON answers
    BEGIN SELECT RAISE(ABORT, 'answers are append-only'); END;
"""


class AlreadyAnswered(StudyError):
    """The reader answered this pair before and did not ask to change the answer."""


@dataclass(frozen=True)
class Answer:
    reader: str
    pair_id: str
    revision: int  # 0 for the first answer, +1 for each explicit change
    choice: str  # left | right | none
    wrong_left: list[str]  # checklist item ids ticked as visibly wrong in the left image
    wrong_right: list[str]
    time_ms: int
    answered_at: str  # ISO 8601, UTC

    def public(self) -> dict:
        return {
            "pair_id": self.pair_id,
            "revision": self.revision,
            "choice": self.choice,
            "wrong_left": self.wrong_left,
            "wrong_right": self.wrong_right,
            "time_ms": self.time_ms,
            "answered_at": self.answered_at,
        }


class AnswerStore:
    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if not readonly:
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        else:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        finally:
            conn.close()

    def add(
        self,
        reader: str,
        pair_id: str,
        choice: str,
        wrong_left: list[str],
        wrong_right: list[str],
        time_ms: int,
        change: bool = False,
    ) -> Answer:
        """Append an answer; a pair answered before needs change=True (then a new revision)."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                (latest,) = conn.execute(
                    "SELECT MAX(revision) FROM answers WHERE reader = ? AND pair_id = ?", (reader, pair_id)
                ).fetchone()
                if latest is not None and not change:
                    raise AlreadyAnswered(
                        f"pair {pair_id} is already answered by {reader}; send change=true to change the answer"
                    )
                revision = 0 if latest is None else latest + 1
                conn.execute(
                    "INSERT INTO answers (reader, pair_id, revision, choice, wrong_left, wrong_right, time_ms, "
                    "answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        reader,
                        pair_id,
                        revision,
                        choice,
                        json.dumps(wrong_left),
                        json.dumps(wrong_right),
                        time_ms,
                        now,
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return Answer(reader, pair_id, revision, choice, list(wrong_left), list(wrong_right), time_ms, now)

    def history(self, reader: str | None = None) -> list[Answer]:
        """Every answer (all revisions) in the order given, optionally of one reader."""
        if self.readonly and not self.path.exists():
            return []
        query = "SELECT reader, pair_id, revision, choice, wrong_left, wrong_right, time_ms, answered_at FROM answers"
        args: tuple = ()
        if reader is not None:
            query += " WHERE reader = ?"
            args = (reader,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [Answer(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6], r[7]) for r in rows]

    def latest(self, reader: str | None = None) -> dict[tuple[str, str], Answer]:
        """(reader, pair id) -> the answer that counts (the latest revision)."""
        out: dict[tuple[str, str], Answer] = {}
        for answer in self.history(reader):
            out[(answer.reader, answer.pair_id)] = answer
        return out
