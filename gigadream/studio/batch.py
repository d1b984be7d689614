"""The studio without a browser: ``gigadream batch jobs.yaml`` (queue, then run until the
queue is empty) and ``gigadream jobs [--watch]`` (the queue as a table)."""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

from ..config import presets
from ..errors import InputError, Interrupted
from ..text import duration
from .jobs import checked, read_jobs_file
from .runner import Runner, SchedulerBusy, Studio


def _local_path(base: Path):
    def resolve(text) -> Path:
        if not isinstance(text, str) or not text:
            raise InputError(f"expected a file path, got {text!r}")
        return (base / text).absolute()
    return resolve


def _config_file(spec, base: Path):
    """A job whose ``config:`` is a YAML file's path, that path taken from the jobs file's
    folder (where the queue's runner reads it, whatever its working folder); a bundled
    preset's name, that preset's file. The queue keeps absolute paths."""
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), str):
        return spec
    name = spec["config"]
    local = base / name
    if local.exists() or Path(name).suffix:
        return spec | {"config": str(local.absolute())}
    bundled = presets().get(name)
    return spec | {"config": str(bundled)} if bundled else spec | {"config": str(local)}


def queue_file(studio: Studio, jobs_file: Path) -> list[int]:
    """Every job of ``jobs_file`` checked (settings with the CLI's parser, inputs by their
    headers), then queued, in one transaction with the batch that names them; nothing is
    queued if any is refused. Returns their ids."""
    path = Path(jobs_file).absolute()
    resolve = _local_path(path.parent)
    groups = [checked(_config_file(spec, path.parent), resolve)
              for spec in read_jobs_file(jobs_file)]
    return sorted(studio.queue.add_batch(path, _digest(path), groups, studio.jobs_dir))


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def batch(jobs_file: Path, studio_dir: Path, slots: int | None, scheduler: str | None) -> int:
    """Queue, then run the studio's queue here until it is empty (or, where a ``serve``
    runs this studio, leave the jobs to it). Exit 0 when every job of this batch is done."""
    studio = Studio(studio_dir)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)
    # The same command again after a kill -9 (or a reboot) resumes that batch: its jobs
    # queued anew would run every finished one a second time.
    path = Path(jobs_file).absolute()
    ids = studio.queue.unfinished_batch(path, _digest(path)) if path.is_file() else None
    if ids is None:
        ids = queue_file(studio, jobs_file)
        say(f"queued {len(ids)} jobs ({', '.join(map(str, ids))}) in {studio.root}")
    else:
        say(f"resuming the unfinished batch of {jobs_file} in {studio.root}: jobs "
            f"{', '.join(map(str, ids))} (finished ones are not run again)")
    runner = Runner(studio, slots, scheduler)
    seen: dict[int, str] = {}

    def report() -> None:
        for job in studio.queue.jobs(f"id IN ({','.join('?' * len(ids))})", ids):
            if seen.get(job["id"]) != job["status"]:
                seen[job["id"]] = job["status"]
                extra = f": {job['error']}" if job["error"] else (
                    f" on {job['slot']}" if job["status"] == "running" else "")
                say(f"job {job['id']} {job['status']}{extra}")
    try:
        runner.run_until_empty(report)
    except SchedulerBusy as e:
        say(f"{e}: the jobs wait in its queue ('gigadream jobs --studio {studio_dir} --watch')")
        return 0
    except Interrupted as e:
        raise Interrupted(f"{e}: stopped; the running jobs keep their finished passes and "
                          "wait in the queue: 'gigadream batch' or 'serve' on this studio "
                          "resumes them", e.signum) from None
    report()
    jobs = studio.queue.jobs(f"id IN ({','.join('?' * len(ids))})", ids)
    done = [j for j in jobs if j["status"] == "done"]
    say(f"{len(done)} of {len(jobs)} jobs done; results in {studio.jobs_dir}")
    return 0 if len(done) == len(jobs) else 1


def table(studio: Studio) -> str:
    """The queue as ``gigadream jobs`` prints it."""
    rows = [("job", "group", "status", "progress", "stage", "ETA", "slot", "image", "settings")]
    for j in studio.queue.jobs():
        label = " ".join(f"{k}={v}" for k, v in j["label"].items()) or (
            Path(j["preset"]).stem if j["preset"] else "")
        rows.append((str(j["id"]), str(j["group_id"]), j["status"],
                     f"{100 * j['progress']:.0f} %", (j["error"] or j["stage"])[:40],
                     duration(j["eta_s"]) if j["status"] == "running" else "",
                     j["slot"] or "", Path(j["input"]).name, label))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def show_jobs(studio_dir: Path, watch: bool) -> int:
    if not (Path(studio_dir) / "studio.db").exists():
        raise InputError(f"no studio at {studio_dir}; start one with 'gigadream serve' or "
                         "'gigadream batch', or give --studio DIR")
    studio = Studio(studio_dir)
    if not watch:
        print(table(studio))
        return 0
    try:
        while True:
            text = table(studio)
            print(("\033[H\033[J" if sys.stdout.isatty() else "\n") + text, flush=True)
            time.sleep(2)
    except Interrupted:
        return 0
