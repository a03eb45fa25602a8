"""Upload jobs, kept in ``jobs.json`` inside the index folder so they outlive the server.

Ids come from a counter stored with the jobs and are never reused. On start, a job the last server
left queued is queued again; one it left ingesting is resumed once (its file is ingested again;
ingest skips what is already committed and goes on from the pages its checkpoint kept) and failed,
with the reason, if it was interrupted before.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import JobsFileError
from ..files import atomic_write

JOBS_FILE = "jobs.json"
STATES = ("queued", "converting", "ingesting", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
MAX_RESUMES = 1


@dataclass
class Job:
    """One uploaded file being ingested in the background."""

    id: str
    name: str
    path: Path  # the stored upload
    state: str = "queued"
    pages_done: int = 0
    pages_total: int = 0
    pages_kept: int = 0  # encoded pages of an unfinished job the index keeps for a re-run (a checkpoint)
    report: dict | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    resumes: int = 0  # how often a restart picked it up again
    changed: threading.Condition = field(default_factory=threading.Condition, repr=False)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def to_json(self, root: Path | None = None) -> dict:
        shown = os.path.relpath(self.path, root) if root is not None else str(self.path)
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "pages_done": self.pages_done,
            "pages_total": self.pages_total,
            "pages_kept": self.pages_kept,
            "report": self.report,
            "error": self.error,
            "created": self.created,
            "resumes": self.resumes,
            "file": shown,
            "file_kept": self.path.exists(),
        }

    def to_record(self) -> dict:
        return {**self.to_json(), "file": str(self.path)}

    def update(self, **values: Any) -> None:
        with self.changed:
            for name, value in values.items():
                setattr(self, name, value)
            self.changed.notify_all()

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


class JobStore:
    """The jobs of one index folder, saved after every change (``atomic_write``: a crash leaves the
    old list or the new one)."""

    def __init__(self, folder: Path, keep: int = 100) -> None:
        self.file = folder / JOBS_FILE
        self.keep = keep
        self._lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.next_id = 1
        self._load()

    def _load(self) -> None:
        if not self.file.exists():
            return
        try:
            data = json.loads(self.file.read_text("utf-8"))
            self.next_id = int(data["next_id"])
            for record in data["jobs"]:
                job = Job(
                    id=str(record["id"]),
                    name=str(record["name"]),
                    path=Path(record["file"]),
                    state=record["state"] if record["state"] in STATES else "failed",
                    pages_done=int(record.get("pages_done", 0)),
                    pages_total=int(record.get("pages_total", 0)),
                    pages_kept=int(record.get("pages_kept", 0)),
                    report=record.get("report"),
                    error=record.get("error"),
                    created=float(record.get("created", 0)),
                    resumes=int(record.get("resumes", 0)),
                )
                self.jobs[job.id] = job
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise JobsFileError(
                f"{self.file}: cannot read the upload jobs ({error}); move it away to start with an empty job list"
            ) from error

    def recover(self) -> list[Job]:
        """Jobs a stopped server left unfinished: queued again (returned) or failed with the reason."""
        again = []
        with self._lock:
            for job in self.jobs.values():
                if job.finished:
                    continue
                if not job.path.exists():
                    job.update(state="failed", error="the uploaded file is gone")
                elif job.state == "ingesting" and job.resumes >= MAX_RESUMES:
                    job.update(
                        state="failed",
                        error=f"the server stopped while ingesting it {job.resumes + 1} "
                        "times; delete it or upload it again",
                    )
                else:
                    if job.state in ("converting", "ingesting"):
                        job.resumes += 1
                    job.update(state="queued", pages_done=0)
                    again.append(job)
            self.save()
        return again

    def add(self, name: str, path: Path) -> Job:
        with self._lock:
            job = Job(id=str(self.next_id), name=name, path=path)
            self.next_id += 1
            self.jobs[job.id] = job
            finished = [j for j in self.jobs.values() if j.finished and not j.path.exists()]
            while len(self.jobs) > self.keep and finished:  # forget old jobs whose files are gone
                self.jobs.pop(finished.pop(0).id)
            self.save()
            return job

    def remove(self, job_id: str) -> None:
        with self._lock:
            self.jobs.pop(job_id, None)
            self.save()

    def save(self) -> None:
        with self._lock:
            payload = json.dumps(
                {"next_id": self.next_id, "jobs": [j.to_record() for j in self.jobs.values()]}, indent=1
            )
            atomic_write(self.file, payload)
