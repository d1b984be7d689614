"""The studio's queue: one SQLite file (``STUDIO/studio.db``, WAL mode) that the server, the
scheduler, ``gigadream batch`` and ``gigadream jobs`` share.

WAL lets ``gigadream jobs --watch`` and the page read while the scheduler writes; every
state change is one short transaction, so a kill -9 at any moment leaves the file
consistent (SQLite's journal) and the queue as it was at the last change.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

# queued → running → done | failed; running → stopped (by the user, resumable) or back to
# queued (the server went down: resumed at its next start); queued | stopped → cancelled.
STATUSES = ("queued", "running", "done", "failed", "cancelled", "stopped")
ACTIVE = ("queued", "running")

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,     -- absolute: an upload under STUDIO/images, or a picked file
    name TEXT NOT NULL,            -- what the user called it (shown, never used as a path)
    origin TEXT NOT NULL,          -- upload | pick
    width INTEGER, height INTEGER, bytes INTEGER,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    sweep TEXT,                    -- the swept setting's key, or NULL for a single job
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    group_id INTEGER NOT NULL REFERENCES groups(id),
    kind TEXT NOT NULL DEFAULT 'run',  -- run | preview
    status TEXT NOT NULL DEFAULT 'queued',
    priority INTEGER NOT NULL DEFAULT 0,   -- higher runs first; then the older
    input TEXT NOT NULL,           -- absolute path of the input image
    preset TEXT,                   -- the preset or config it started from (for the page)
    overrides TEXT NOT NULL,       -- JSON list of KEY=VALUE, as --set takes them
    label TEXT NOT NULL DEFAULT '{}',  -- JSON: the values that differ within its group
    dir TEXT NOT NULL,             -- STUDIO/jobs/<group>/<job>
    progress REAL NOT NULL DEFAULT 0,  -- 0..1 of the run's work units
    stage TEXT NOT NULL DEFAULT '',
    eta_s REAL, tiles_s REAL,
    slot TEXT,                     -- cpu0, cpu1, gpu0, ... while it runs
    pid INTEGER,                   -- the child process while it runs
    stop TEXT,                     -- asked of a running job: stop | cancel
    error TEXT,                    -- the one-line reason of a failure
    parent INTEGER,                -- the job this one re-runs with changes
    created REAL NOT NULL, started REAL, finished REAL,
    run_s REAL NOT NULL DEFAULT 0, -- seconds spent running, over every attempt
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, priority, created);
CREATE TABLE IF NOT EXISTS runs (  -- each attempt of a job: when it ran, where, how it ended
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    slot TEXT, started REAL NOT NULL, ended REAL, outcome TEXT
);
CREATE TABLE IF NOT EXISTS batches (  -- each jobs file 'gigadream batch' queued
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,            -- the jobs file, absolute
    digest TEXT NOT NULL,          -- sha256 of its bytes: the same file unchanged
    jobs TEXT NOT NULL,            -- JSON list of the job ids it queued
    created REAL NOT NULL
);
"""


class Queue:
    """The queue in ``STUDIO/studio.db``: one connection per thread, autocommit, every
    change in its own (IMMEDIATE) transaction."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                check_same_thread=False)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")     # WAL: durable at checkpoints, never corrupt
            c.execute("PRAGMA foreign_keys=ON")
            self._local.conn = c
        return c

    class _Tx:
        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, kind, value, tb) -> None:
            self.conn.execute("COMMIT" if kind is None else "ROLLBACK")

    def _tx(self) -> "Queue._Tx":
        return Queue._Tx(self._conn())

    def query(self, sql: str, args: Iterable[Any] = ()) -> list[dict]:
        return [dict(r) for r in self._conn().execute(sql, tuple(args)).fetchall()]

    # --- images -------------------------------------------------------------------------

    def add_image(self, path: Path, name: str, origin: str, width: int, height: int,
                  size: int) -> dict:
        with self._tx() as c:
            c.execute("INSERT INTO images(path, name, origin, width, height, bytes, created) "
                      "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                      "width=excluded.width, height=excluded.height, bytes=excluded.bytes",
                      (str(path), name, origin, width, height, size, time.time()))
        return self.image_by_path(path)

    def image(self, image_id: int) -> dict | None:
        rows = self.query("SELECT * FROM images WHERE id=?", (image_id,))
        return rows[0] if rows else None

    def image_by_path(self, path: Path) -> dict | None:
        rows = self.query("SELECT * FROM images WHERE path=?", (str(path),))
        return rows[0] if rows else None

    def images(self) -> list[dict]:
        return self.query("SELECT * FROM images ORDER BY id DESC")

    # --- groups and jobs ----------------------------------------------------------------

    def add_group(self, name: str, sweep: str | None, jobs: list[dict],
                  jobs_dir: Path) -> int:
        """A group and its jobs (dicts of input, preset, overrides, label and optionally
        kind, priority, parent), queued in one transaction: a sweep is queued whole or not at
        all."""
        with self._tx() as c:
            gid, _ = _insert_group(c, name, sweep, jobs, jobs_dir)
        return gid

    def add_batch(self, path: Path, digest: str, groups: list[tuple[str, str | None, list[dict]]],
                  jobs_dir: Path) -> list[int]:
        """The groups of the jobs file at ``path`` (``add_group``'s arguments each), queued in
        one transaction with the batch that names them: a kill -9 leaves all of them queued
        and recorded, or none. Returns the jobs' ids."""
        ids: list[int] = []
        with self._tx() as c:
            for name, sweep, jobs in groups:
                ids += _insert_group(c, name, sweep, jobs, jobs_dir)[1]
            c.execute("INSERT INTO batches(path, digest, jobs, created) VALUES (?, ?, ?, ?)",
                      (str(path), digest, json.dumps(ids), time.time()))
        return ids

    def unfinished_batch(self, path: Path, digest: str) -> list[int] | None:
        """The job ids of the last batch queued from the unchanged jobs file at ``path``, if
        one of them still waits or runs (its ``gigadream batch`` was stopped or killed), else
        None."""
        rows = self.query("SELECT jobs FROM batches WHERE path=? AND digest=? "
                          "ORDER BY id DESC LIMIT 1", (str(path), digest))
        if not rows:
            return None
        ids = json.loads(rows[0]["jobs"])
        marks = ",".join("?" * len(ids))
        active = self.query(f"SELECT id FROM jobs WHERE id IN ({marks}) AND status IN "
                            f"({','.join('?' * len(ACTIVE))})", (*ids, *ACTIVE))
        return ids if active else None

    def job(self, job_id: int) -> dict | None:
        rows = self.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return _decoded(rows[0]) if rows else None

    def jobs(self, where: str = "1", args: Iterable[Any] = ()) -> list[dict]:
        return [_decoded(r) for r in self.query(
            f"SELECT * FROM jobs WHERE {where} ORDER BY "
            "CASE status WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, "
            "CASE WHEN status IN ('running', 'queued') THEN -priority ELSE 0 END, "
            "CASE WHEN status IN ('running', 'queued') THEN id ELSE -id END", args)]

    def group(self, group_id: int) -> dict | None:
        rows = self.query("SELECT * FROM groups WHERE id=?", (group_id,))
        return rows[0] if rows else None

    def claim(self, slot: str) -> dict | None:
        """The next queued job (highest priority, then oldest), marked running on ``slot``."""
        with self._tx() as c:
            row = c.execute("SELECT id FROM jobs WHERE status='queued' "
                            "ORDER BY priority DESC, id LIMIT 1").fetchone()
            if row is None:
                return None
            now = time.time()
            c.execute("UPDATE jobs SET status='running', slot=?, started=?, finished=NULL, "
                      "error=NULL, stop=NULL, stage='starting', eta_s=NULL, tiles_s=NULL, "
                      "attempts=attempts+1 WHERE id=?", (slot, now, row["id"]))
            c.execute("INSERT INTO runs(job_id, slot, started) VALUES (?, ?, ?)",
                      (row["id"], slot, now))
        return self.job(row["id"])

    def update(self, job_id: int, **fields) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._tx() as c:
            c.execute(f"UPDATE jobs SET {cols} WHERE id=?", (*fields.values(), job_id))

    def transition(self, job_id: int, allowed: tuple[str, ...], **fields) -> bool:
        """Set ``fields`` of a job whose status is one of ``allowed``; False if it is not
        (it changed meanwhile): the page's buttons race the scheduler."""
        cols = ", ".join(f"{k}=?" for k in fields)
        marks = ", ".join("?" * len(allowed))
        with self._tx() as c:
            n = c.execute(f"UPDATE jobs SET {cols} WHERE id=? AND status IN ({marks})",
                          (*fields.values(), job_id, *allowed)).rowcount
        return n == 1

    def end_run(self, job_id: int, outcome: str, **fields) -> None:
        """The attempt in progress ended with ``outcome`` (the job's new status)."""
        now = time.time()
        with self._tx() as c:
            job = c.execute("SELECT started FROM jobs WHERE id=?", (job_id,)).fetchone()
            ran = now - job["started"] if job and job["started"] else 0.0
            sets = {"status": outcome, "pid": None, "slot": None, "stop": None, **fields}
            if outcome != "queued":
                sets["finished"] = now
            cols = ", ".join(f"{k}=?" for k in sets)
            c.execute(f"UPDATE jobs SET {cols}, run_s=run_s+? WHERE id=?",
                      (*sets.values(), ran, job_id))
            c.execute("UPDATE runs SET ended=?, outcome=? WHERE job_id=? AND ended IS NULL",
                      (now, outcome, job_id))

    def runs(self, job_id: int) -> list[dict]:
        return self.query("SELECT * FROM runs WHERE job_id=? ORDER BY started", (job_id,))

    def counts(self) -> dict[str, int]:
        return {r["status"]: r["n"] for r in
                self.query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")}


def _insert_group(c: sqlite3.Connection, name: str, sweep: str | None, jobs: list[dict],
                  jobs_dir: Path) -> tuple[int, list[int]]:
    """A group and its jobs inserted in the transaction of ``c``: the group's id, its jobs'."""
    now = time.time()
    gid = c.execute("INSERT INTO groups(name, sweep, created) VALUES (?, ?, ?)",
                    (name, sweep, now)).lastrowid
    ids = []
    for j in jobs:
        jid = c.execute(
            "INSERT INTO jobs(group_id, kind, priority, input, preset, overrides, label, "
            "dir, parent, created) VALUES (?, ?, ?, ?, ?, ?, ?, '', ?, ?)",
            (gid, j.get("kind", "run"), j.get("priority", 0), str(j["input"]),
             j.get("preset"), json.dumps(j["overrides"]), json.dumps(j.get("label", {})),
             j.get("parent"), now)).lastrowid
        c.execute("UPDATE jobs SET dir=? WHERE id=?",
                  (str(Path(jobs_dir) / str(gid) / str(jid)), jid))
        ids.append(jid)
    return gid, ids


def _decoded(row: dict) -> dict:
    row["overrides"] = json.loads(row["overrides"])
    row["label"] = json.loads(row["label"])
    return row
