"""Search several complete docqa indexes (shards, split by document) as if they were one.

The query is encoded once, with the retriever every shard was built with (shards built with
different encoders are refused), then every shard returns its own top-k for the same query
vectors, in parallel: in-process threads, or on a Ray cluster one actor per shard holding it
open. The exact top-k of the union is among the shards' exact top-k lists, so merging them by
score gives what one index holding all the pages returns in exact mode (ties: shard order, then
rank). In the fast mode every shard reranks its own candidates: at least as many as one index would.

A parent folder with a `shards.json` ({"shards": ["path", ...]}, paths relative to it) stands for
the shards it lists (`write_shard_list`). `ingest_sharded` fills shards: each file goes to the
shard a stable hash of its path picks, so re-runs find it where it was (keep the shard list fixed).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from ..api import DocIndex, Hit, check_query
from ..build import BuildStamp, common_stamp
from ..config import IngestSettings, index_path
from ..errors import ClusterError, IndexMismatchError, IndexNotFoundError
from ..files import atomic_write
from ..ingest.report import IngestReport
from ..inputs import sources
from ..models.retriever import Retriever
from .ray_runtime import connect

SHARD_LIST = "shards.json"


@dataclass(frozen=True)
class ShardHit(Hit):
    shard: str  # the index (folder) the page is in; document_id and page_id are that index's

    def to_json(self) -> dict:
        return {**super().to_json(), "shard": self.shard}


def write_shard_list(parent: str | os.PathLike[str], shards: Sequence[str | os.PathLike[str]]) -> Path:
    """Record `shards` in `parent`/shards.json (paths relative to `parent` where they lie under it)."""
    folder = index_path(parent)
    folder.mkdir(parents=True, exist_ok=True)
    listed = [
        os.path.relpath(index_path(shard), folder)
        if index_path(shard).is_relative_to(folder)
        else str(index_path(shard))
        for shard in shards
    ]
    target = folder / SHARD_LIST
    atomic_write(target, json.dumps({"shards": listed}, indent=1))
    return target


def shard_locations(locations: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Index folders named by `locations`; a folder with a shards.json stands for its shards."""
    found: list[Path] = []
    for location in locations:
        folder = index_path(location)
        listing = folder / SHARD_LIST
        if listing.exists():
            try:
                listed = json.loads(listing.read_text())["shards"]
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise ClusterError(f"{listing} is not a shard list: {error}") from error
            found.extend((folder / shard).resolve() for shard in listed)
        else:
            found.append(folder)
    if not found:
        raise ClusterError("no shards given")
    if len(set(found)) != len(found):
        raise ClusterError("a shard is listed twice; its pages would count twice")
    return found


def shard_of(file: Path, shards: int) -> int:
    """The shard (0..shards-1) a file belongs to: a stable hash of its path's bytes."""
    return int.from_bytes(hashlib.sha256(os.fsencode(file)).digest()[:8], "big") % shards


_SUMMED = (
    "added",
    "updated",
    "unchanged",
    "removed",
    "failed",
    "skipped",
    "duplicates",
    "pages_added",
    "pages_resumed",
)


def ingest_sharded(
    locations: Sequence[str | os.PathLike[str]], paths: Sequence[str | os.PathLike[str]], settings: IngestSettings
) -> IngestReport:
    """Ingest the files under `paths` into the shards at `locations` (created when missing), each
    file into shard_of(file); one report for all of them (`index` lists the shards)."""
    if settings.sync:
        raise ClusterError("--sync cannot be combined with --shards; run `docqa remove` on each shard instead")
    started = time.monotonic()
    shards = shard_locations(locations)
    report = IngestReport(index=", ".join(map(str, shards)))
    routed: list[list[Path]] = [[] for _ in shards]
    for found in sources.walk(paths):
        if isinstance(found, sources.Skipped):
            report.skip(found.path, found.reason, found.group)
        elif isinstance(found, tuple):
            report.fail(*found)
        else:
            routed[shard_of(found, len(shards))].append(found)
    for shard, files in zip(shards, routed):
        index = DocIndex.open(shard, create=True)  # every shard exists afterwards, even one left empty
        if files:
            part = index.ingest(files, settings)
            for name in _SUMMED:
                setattr(report, name, getattr(report, name) + getattr(part, name))
            report.failures.extend(part.failures)
            report.resumed.extend(part.resumed)
            report.duplicate_files.extend(part.duplicate_files)
    report.seconds = time.monotonic() - started
    return report


class ShardActor:
    """On a Ray worker: one shard held open, searched by query vectors."""

    def __init__(self, path: str) -> None:
        self.index = DocIndex.open(path)

    def build(self) -> dict | None:
        """The shard's build stamp as JSON (what crosses the Ray boundary)."""
        return None if self.index.build is None else self.index.build.to_json()

    def search_embeddings(
        self, query: np.ndarray, k: int, exact: bool, where: dict | None, path: str | None, rerank: int | None = None
    ) -> list[Hit]:
        return self.index.search_embeddings(query, k, exact=exact, rerank=rerank, where=where, path=path)


class ShardSet:
    """Several shards searched as one index (a docqa.api.VectorSearchable, as DocIndex is)."""

    def __init__(
        self,
        paths: list[Path],
        builds: list[BuildStamp | None],
        *,
        local: list[DocIndex] | None = None,
        actors: list | None = None,
        ray: ModuleType | None = None,
    ) -> None:
        self.paths = paths
        self.path = paths[0].parent  # what messages name (Asker: "... has no pages yet")
        self._local = local
        self._actors = actors
        self._ray = ray
        self._retriever: Retriever | None = None
        self.build = common_stamp(paths, builds)

    @classmethod
    def open(
        cls, locations: Sequence[str | os.PathLike[str]], *, ray: str | None = None, cpus_per_shard: float = 1.0
    ) -> ShardSet:
        """Open the shards at `locations`; with `ray` (an address, or "local") each is held by a Ray
        actor (the shard folders must be readable where the actors run)."""
        paths = shard_locations(locations)
        if ray is None:
            indexes = [DocIndex.open(path) for path in paths]
            return cls(paths, [index.build for index in indexes], local=indexes)
        for path in paths:  # fail here, not in an actor, when a shard is missing
            if not path.exists():
                raise IndexNotFoundError(f"no index at {path}")
        runtime = connect(ray)
        remote = runtime.remote(num_cpus=cpus_per_shard)(ShardActor)
        actors = [remote.remote(str(path)) for path in paths]
        builds = runtime.get([actor.build.remote() for actor in actors])
        stamps = [None if build is None else BuildStamp.from_json(build) for build in builds]
        return cls(paths, stamps, actors=actors, ray=runtime)

    def retriever(self, device: str | None = None, engine: str | None = None) -> Retriever:
        """The shards' common retriever, loaded here once (queries are encoded on this machine)."""
        if self._retriever is None:
            if self._local is not None:
                self._retriever = next(index for index in self._local if index.build).retriever(
                    device=device, engine=engine
                )
            else:
                assert self.build is not None, "no shard holds pages yet"
                encoder = self.build.encoder_for(self.path)
                if engine is not None and engine != encoder.engine:
                    raise IndexMismatchError(
                        f"the shards were built with the {encoder.engine} engine; they cannot take --engine {engine}"
                    )
                retriever = Retriever.load(
                    encoder.model, device=device, image_edge=encoder.image_edge, engine=encoder.engine
                )
                if retriever.stamp.config_hash != encoder.config_hash:
                    raise IndexMismatchError(
                        f"the checkpoint {encoder.model!r} differs from the one the"
                        " shards were built with (its config changed)"
                    )
                self._retriever = retriever
        return self._retriever

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        device: str | None = None,
        exact: bool = False,
        rerank: int | None = None,
        where: dict | None = None,
        path: str | None = None,
        engine: str | None = None,
    ) -> list[ShardHit]:
        """The k best pages over all shards for `query`, encoded once."""
        check_query(query)
        if self.build is None:
            return []
        vectors = self.retriever(device, engine).encode_queries([query])[0]
        return self.search_embeddings(vectors, k, exact=exact, rerank=rerank, where=where, path=path)

    def search_embeddings(
        self,
        query: np.ndarray,
        k: int = 10,
        *,
        exact: bool = False,
        rerank: int | None = None,
        where: dict | None = None,
        path: str | None = None,
    ) -> list[ShardHit]:
        """Every shard's top-k for the same query vectors, merged by score: the exact top-k of all
        the pages with `exact` (or while each shard is small enough to be scored exactly); in the
        fast mode each shard reranks its own best `rerank` candidates, so the merge sees more."""
        if self.build is None:
            return []
        if self._actors is not None:
            assert self._ray is not None
            per_shard = self._ray.get(
                [actor.search_embeddings.remote(query, k, exact, where, path, rerank) for actor in self._actors]
            )
        else:
            assert self._local is not None
            with ThreadPoolExecutor(max_workers=len(self._local), thread_name_prefix="docqa-shard") as pool:
                per_shard = list(
                    pool.map(
                        lambda index: (
                            index.search_embeddings(query, k, exact=exact, rerank=rerank, where=where, path=path)
                            if index.build
                            else []
                        ),
                        self._local,
                    )
                )
        return merge_top_k(per_shard, [str(path) for path in self.paths], k)

    def close(self) -> None:
        for index in self._local or []:
            index.close()
        for actor in self._actors or []:
            assert self._ray is not None
            self._ray.kill(actor)


def merge_top_k(per_shard: list[list[Hit]], shards: list[str], k: int) -> list[ShardHit]:
    """The k best of the shards' ranked lists by score (ties: shard order, then rank), re-ranked."""
    ranked = sorted(
        ((-hit.score, number, hit.rank, hit) for number, hits in enumerate(per_shard) for hit in hits),
        key=lambda entry: entry[:3],
    )
    return [
        ShardHit(**{**_fields(hit), "rank": rank, "shard": shards[number]})
        for rank, (_, number, _, hit) in enumerate(ranked[:k], start=1)
    ]


def _fields(hit: Hit) -> dict:
    return {name: getattr(hit, name) for name in Hit.__dataclass_fields__}
