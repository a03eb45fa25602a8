"""Retrieval evaluation: read judged queries (qrels), run them through an index, score the rankings.

Four parts, in this order:

- metrics: pure functions over a ranking (a list of page keys, best first) and the query's graded
  relevant pages. nDCG uses linear gain (gain = grade, as trec_eval, BEIR and ViDoRe do) and a log2
  discount; the ideal DCG comes from *all* relevant pages of the query, retrieved or not.
- readers: a JSONL file of ``{"query": str, "relevant": [{"path", "page", "grade"}]}`` lines, or a
  folder in BEIR layout (``queries``, ``qrels``, optional ``corpus``; JSONL, TSV or parquet) as
  ViDoRe publishes it.
- `DocumentMatcher`: finds the indexed document a judgment names.
- `evaluate_index`: match the judged pages to indexed pages, encode the queries in batches with
  the index's retriever, search each (default mode, and exact mode when asked), average the metrics.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import time
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DocIndexError, MissingDependencyError, QrelsError

if TYPE_CHECKING:
    from .api import DocIndex

NDCG_CUTOFFS = (5, 10)
QUERY_BATCH = 8  # queries per forward pass of the retriever
NOTE_EXAMPLES = 5  # unmatched judgments named in the notes (all are counted)


# --- metrics ------------------------------------------------------------------------------------
def dcg(gains: Iterable[float]) -> float:
    """Discounted cumulative gain: sum of gain_i / log2(i + 1) over ranks i = 1, 2, ..."""
    return sum(gain / math.log2(rank + 1) for rank, gain in enumerate(gains, start=1))


def ndcg_at(ranking: Sequence[Hashable], grades: Mapping[Hashable, float], k: int) -> float:
    """nDCG@k: DCG of the top k (gain = grade, 0 for unjudged pages) over the ideal DCG@k of all
    relevant pages of the query (grade > 0). 0.0 for a query with no relevant page."""
    ideal = dcg(sorted((g for g in grades.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg(max(grades.get(key, 0.0), 0.0) for key in ranking[:k]) / ideal


def recall_at(ranking: Sequence[Hashable], grades: Mapping[Hashable, float], k: int) -> float:
    """|relevant pages in the top k| / |relevant pages| (relevant: grade > 0)."""
    relevant = {key for key, grade in grades.items() if grade > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def reciprocal_rank_at(ranking: Sequence[Hashable], grades: Mapping[Hashable, float], k: int) -> float:
    """1 / rank of the first relevant page within the top k, else 0."""
    for rank, key in enumerate(ranking[:k], start=1):
        if grades.get(key, 0) > 0:
            return 1.0 / rank
    return 0.0


@dataclass(frozen=True)
class Metrics:
    """Metrics averaged over queries (each query weighs the same)."""

    ndcg_at_5: float
    ndcg_at_10: float
    recall_at_k: float
    mrr_at_k: float
    queries: int

    def to_json(self) -> dict:
        return {
            "ndcg@5": self.ndcg_at_5,
            "ndcg@10": self.ndcg_at_10,
            "recall@k": self.recall_at_k,
            "mrr@k": self.mrr_at_k,
            "queries": self.queries,
        }


def score_rankings(
    rankings: Sequence[Sequence[Hashable]], grades: Sequence[Mapping[Hashable, float]], k: int
) -> Metrics:
    """Average nDCG@5, nDCG@10, recall@k and MRR@k over queries (rankings[i] is judged by grades[i])."""
    if len(rankings) != len(grades):
        raise ValueError(f"{len(rankings)} rankings for {len(grades)} judged queries")
    count = len(rankings)

    def mean(values: Iterable[float]) -> float:
        return sum(values) / count if count else 0.0

    pairs = list(zip(rankings, grades))
    return Metrics(
        ndcg_at_5=mean(ndcg_at(r, g, 5) for r, g in pairs),
        ndcg_at_10=mean(ndcg_at(r, g, 10) for r, g in pairs),
        recall_at_k=mean(recall_at(r, g, k) for r, g in pairs),
        mrr_at_k=mean(reciprocal_rank_at(r, g, k) for r, g in pairs),
        queries=count,
    )


# --- what a qrels source holds ------------------------------------------------------------------
@dataclass(frozen=True)
class Judgment:
    """One relevant page as the qrels name it: a file path (absolute, relative to the qrels, or a
    bare name / trailing part of an indexed path) or a BEIR corpus id, a 1-based page, a grade > 0."""

    path: str
    page: int
    grade: float


@dataclass(frozen=True)
class JudgedQuery:
    query: str
    relevant: tuple[Judgment, ...]
    where: str  # "FILE:LINE" or "FILE: query-id ID", for messages


@dataclass(frozen=True)
class Qrels:
    source: Path
    base: Path  # relative judgment paths are resolved against this folder
    queries: list[JudgedQuery]
    without_relevant: int = 0  # queries read but left out: no judgment with grade > 0


# --- JSONL reader -------------------------------------------------------------------------------
def read_qrels(path: str | os.PathLike[str]) -> Qrels:
    """Read a qrels JSONL file or a BEIR folder. Raises QrelsError naming the file (and line)."""
    source = Path(path).expanduser()
    if source.is_dir():
        return read_beir_folder(source)
    if not source.is_file():
        raise QrelsError(f"{source}: no such file or folder")
    return read_jsonl_qrels(source)


def read_jsonl_qrels(path: Path) -> Qrels:
    """Lines of ``{"query": str, "relevant": [{"path": str, "page": int, "grade": number}]}``.

    `page` defaults to 1 and `grade` to 1; grade 0 marks a judged non-relevant page (ignored).
    Blank lines are skipped. A query with no grade > 0 is counted and left out of the averages.
    """
    queries: list[JudgedQuery] = []
    without_relevant = 0
    for number, record in _jsonl_records(path):
        where = f"{path}:{number}"
        query = record.get("query")
        if not isinstance(query, str) or not query.strip():
            raise QrelsError(f'{where}: "query" must be a non-empty string')
        relevant = record.get("relevant")
        if not isinstance(relevant, list):
            raise QrelsError(f'{where}: "relevant" must be a list of {{"path", "page", "grade"}}')
        judgments = [_judgment(item, f"{where}: relevant[{i}]") for i, item in enumerate(relevant)]
        kept = tuple(j for j in judgments if j.grade > 0)
        if kept:
            queries.append(JudgedQuery(query, kept, where))
        else:
            without_relevant += 1
    return _checked(Qrels(path, path.parent, queries, without_relevant))


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for each non-blank line of a JSONL file."""
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise QrelsError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise QrelsError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
                yield number, record
    except UnicodeDecodeError as error:
        raise QrelsError(f"{path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise QrelsError(f"{path}: cannot read ({error.strerror or error})") from None


def _judgment(item: object, where: str) -> Judgment:
    if not isinstance(item, dict):
        raise QrelsError(f'{where}: expected an object with "path", "page", "grade"')
    path = item.get("path")
    if not isinstance(path, str) or not path:
        raise QrelsError(f'{where}: "path" must be a non-empty string')
    page = item.get("page", 1)
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise QrelsError(f'{where}: "page" must be a whole number from 1, got {page!r}')
    return Judgment(path, page, _grade(item.get("grade", 1), where))


def _grade(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise QrelsError(f"{where}: the grade must be a number >= 0, got {value!r}")
    return float(value)


def _checked(qrels: Qrels) -> Qrels:
    if not qrels.queries:
        extra = f" ({qrels.without_relevant} without any relevant page)" if qrels.without_relevant else ""
        raise QrelsError(f"{qrels.source}: no judged queries{extra}")
    return qrels


# --- BEIR folder reader -------------------------------------------------------------------------
_QUERY_ID = ("query-id", "query_id", "_id")
_QUERY_TEXT = ("query", "text")
_CORPUS_ID = ("corpus-id", "corpus_id", "_id")
_SCORE = ("score",)


def read_beir_folder(folder: Path) -> Qrels:
    """A BEIR folder: ``queries`` and ``qrels`` required, ``corpus`` optional.

    Each part is ``NAME.jsonl`` / ``NAME.tsv`` / ``NAME.parquet`` or a folder ``NAME/`` of such
    files (ViDoRe's downloads: ``qrels/test-00000-of-00001.parquet``; classic BEIR:
    ``qrels/test.tsv``); when a part has files for several splits, the ``test`` split is used.
    Ids may be written ``query-id``/``query_id``/``_id``, query text ``query``/``text``.

    Corpus ids name indexed pages: a corpus row with a ``path`` (and optional 1-based ``page``)
    names that file; otherwise the id is the file name, without extension, of an indexed page image
    (ViDoRe corpus images saved as ``<corpus-id>.png`` and ingested).
    """
    query_rows = _beir_part(folder, "queries", required=True)
    qrels_rows = _beir_part(folder, "qrels", required=True)
    corpus_rows = _beir_part(folder, "corpus", required=False, columns=("path", "page"))

    texts: dict[str, str] = {}
    for where, row in query_rows:
        qid = _column(row, _QUERY_ID, where)
        text = _column(row, _QUERY_TEXT, where)
        if not isinstance(text, str) or not text.strip():
            raise QrelsError(f"{where}: the query text must be a non-empty string")
        texts[str(qid)] = text

    locations: dict[str, tuple[str, int]] = {}
    for where, row in corpus_rows:
        if row.get("path") is None:
            continue
        page = row.get("page")
        page = 1 if page is None else page
        if not isinstance(row["path"], str) or isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise QrelsError(f'{where}: "path" must be a string and "page" a whole number from 1')
        locations[str(_column(row, _CORPUS_ID, where))] = (row["path"], page)

    relevant: dict[str, dict[str, float]] = {}
    for where, row in qrels_rows:
        qid, cid = str(_column(row, _QUERY_ID, where)), str(_column(row, _CORPUS_ID, where))
        if qid not in texts:
            raise QrelsError(f"{where}: query-id {qid} is not in the queries")
        score = _grade(_number(_column(row, _SCORE, where)), where)
        graded = relevant.setdefault(qid, {})
        graded[cid] = max(score, graded.get(cid, 0.0))

    queries: list[JudgedQuery] = []
    for qid, text in texts.items():
        grades = {cid: grade for cid, grade in relevant.get(qid, {}).items() if grade > 0}
        if grades:
            judgments = tuple(Judgment(*locations.get(cid, (cid, 1)), grade) for cid, grade in grades.items())
            queries.append(JudgedQuery(text, judgments, f"{folder}: query-id {qid}"))
    return _checked(Qrels(folder, folder, queries, without_relevant=len(texts) - len(queries)))


def _beir_part(
    folder: Path, name: str, *, required: bool, columns: tuple[str, ...] | None = None
) -> list[tuple[str, dict]]:
    """Rows of one part ("FILE:LINE", row). With `columns`, a corpus part is read only for the ids
    and those columns (a parquet corpus also holds every page image: those are never loaded)."""
    files = _part_files(folder, name)
    if not files:
        if required:
            raise QrelsError(
                f"{folder}: no {name} in this BEIR folder (expected {name}.jsonl, "
                f"{name}.tsv, {name}.parquet or a {name}/ folder of them)"
            )
        return []
    rows: list[tuple[str, dict]] = []
    for file in files:
        if file.suffix == ".parquet":
            rows.extend(_parquet_rows(file, columns))
        elif file.suffix == ".tsv":
            rows.extend(_tsv_rows(file))
        else:
            rows.extend((f"{file}:{number}", record) for number, record in _jsonl_records(file))
    return rows


def _part_files(folder: Path, name: str) -> list[Path]:
    """The files holding one part: ``NAME.jsonl|tsv|parquet`` and ``NAME/*.jsonl|tsv|parquet``; of
    the folder's files only the test split's when it holds several splits (``test.tsv``,
    ``test-00000-of-00001.parquet``: the split is the file name up to its first "-")."""
    suffixes = (".jsonl", ".tsv", ".parquet")
    files = [folder / f"{name}{suffix}" for suffix in suffixes if (folder / f"{name}{suffix}").is_file()]
    if (folder / name).is_dir():
        inside = sorted(p for p in (folder / name).iterdir() if p.suffix in suffixes and p.is_file())
        splits = {p.stem.split("-")[0] for p in inside}
        if len(splits) > 1:
            if "test" not in splits:
                raise QrelsError(
                    f"{folder / name}: files of several splits ({', '.join(sorted(splits))})"
                    " and no test split; keep one split's files"
                )
            inside = [p for p in inside if p.stem.split("-")[0] == "test"]
        files += inside
    return files


def _tsv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """A tab-separated file with a header line (BEIR: query-id, corpus-id, score)."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or None in row.values():
                    raise QrelsError(f"{where}: expected {len(reader.fieldnames or [])} tab-separated columns")
                yield where, row
    except UnicodeDecodeError as error:
        raise QrelsError(f"{path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise QrelsError(f"{path}: cannot read ({error.strerror or error})") from None


def _parquet_rows(path: Path, columns: tuple[str, ...] | None) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(
            f"{path}: reading parquet needs pyarrow; install it with `pip install 'docqa[eval]'`"
        ) from None
    try:
        schema = pq.read_schema(path)
        wanted = None
        if columns is not None:
            wanted = [name for name in schema.names if name in _CORPUS_ID or name in columns]
        table = pq.read_table(path, columns=wanted)
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise QrelsError(f"{path}: cannot read as parquet ({error})") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}: row {number}", row


def _column(row: dict, names: tuple[str, ...], where: str) -> object:
    for name in names:
        if row.get(name) is not None:
            return row[name]
    raise QrelsError(f"{where}: missing column {' / '.join(names)}")


def _number(value: object) -> object:
    """TSV cells are text: "2" and "1.0" are grades."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# --- judged pages -> indexed pages --------------------------------------------------------------
@dataclass(frozen=True)
class IndexedDocument:
    id: int
    file: Path
    pages: int


class DocumentMatcher:
    """Finds the indexed document a judgment names.

    In order: an absolute path, or a relative one taken from the qrels' folder, that is an indexed
    file (as given or with symlinks resolved); else the one indexed file whose path ends with the
    given parts (``q1.pdf``, ``reports/q1.pdf``); else, for a bare name without a suffix (a BEIR
    corpus id), the one indexed file with that name before its extension (``17`` -> ``17.png``).
    """

    def __init__(self, documents: Iterable[IndexedDocument]) -> None:
        self._by_path: dict[Path, IndexedDocument] = {}
        self._by_name: dict[str, list[IndexedDocument]] = {}
        self._by_stem: dict[str, list[IndexedDocument]] = {}
        for document in documents:
            self._by_path[document.file] = document
            self._by_name.setdefault(document.file.name, []).append(document)
            self._by_stem.setdefault(document.file.stem, []).append(document)

    def find(self, written: str, base: Path) -> IndexedDocument | str:
        """The document, or why there is none (a phrase for a note)."""
        given = Path(written).expanduser()
        full = given if given.is_absolute() else base / given
        for candidate in (Path(os.path.normpath(full)), _resolved(full)):
            if candidate in self._by_path:
                return self._by_path[candidate]
        if given.is_absolute():
            return "no indexed document at that path"
        parts = Path(os.path.normpath(given)).parts
        matches = [d for d in self._by_name.get(given.name, []) if d.file.parts[-len(parts) :] == parts]
        if not matches and len(parts) == 1 and not given.suffix:
            matches = self._by_stem.get(written, [])
        if len(matches) == 1:
            return matches[0]
        if matches:
            return f"ambiguous: {len(matches)} indexed documents match ({matches[0].file}, {matches[1].file}, ...)"
        return "no indexed document matches"


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):  # unreadable, a symlink loop, a NUL in the name
        return path


# --- running an index over qrels ----------------------------------------------------------------
@dataclass
class ModeResult:
    metrics: Metrics
    search_s: list[float]  # per query, searching only (query encoding is timed once, in EvalReport)

    @property
    def latency_ms_p50(self) -> float:
        """Median time per search: the first search's one-time loading of the index does not skew it."""
        return 1000 * statistics.median(self.search_s) if self.search_s else 0.0

    def to_json(self) -> dict:
        return {
            **self.metrics.to_json(),
            "search_s": round(sum(self.search_s), 4),
            "latency_ms_p50": round(self.latency_ms_p50, 2),
        }


@dataclass
class EvalReport:
    index: str
    qrels: str
    k: int
    modes: dict[str, ModeResult]  # "default", and "exact" when asked
    encode_s: float
    judgments: int
    unmatched: list[str] = field(default_factory=list)  # "PATH page N (where): why", one per judgment
    without_relevant: int = 0

    @property
    def notes(self) -> list[str]:
        notes = []
        if self.unmatched:
            shown = "; ".join(self.unmatched[:NOTE_EXAMPLES])
            more = f"; and {len(self.unmatched) - NOTE_EXAMPLES} more" if len(self.unmatched) > NOTE_EXAMPLES else ""
            notes.append(
                f"{len(self.unmatched)} of {self.judgments} relevant pages are not in the index"
                f" (counted as never retrieved): {shown}{more}"
            )
        if self.without_relevant:
            notes.append(f"{self.without_relevant} queries have no relevant page and are left out")
        return notes

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "qrels": self.qrels,
            "k": self.k,
            "gain": "grade",
            **{mode: result.to_json() for mode, result in self.modes.items()},
            "encode_s": round(self.encode_s, 4),
            "judgments": self.judgments,
            "unmatched_judgments": len(self.unmatched),
            "queries_without_relevant": self.without_relevant,
            "notes": self.notes,
        }


def evaluate_index(
    index: DocIndex, qrels: Qrels, *, k: int = 10, exact: bool = False, device: str | None = None
) -> EvalReport:
    """Search every judged query (top max(k, 10), so nDCG@10 is always defined) and score it.

    Judged pages that match no indexed page stay in each query's relevant set (they count against
    recall and the ideal DCG) and are listed in the report's notes.
    """
    if index.build is None:
        raise DocIndexError(f"{index.path} has no documents yet; ingest some before evaluating")
    matcher = DocumentMatcher(IndexedDocument(r.id, r.file, r.pages) for r in index.documents())
    grades: list[dict[Hashable, float]] = []
    unmatched: list[str] = []
    for judged in qrels.queries:
        graded: dict[Hashable, float] = {}
        for judgment in judged.relevant:
            found = _page_key(matcher, judgment, qrels.base)
            key: Hashable = found
            if isinstance(found, str):
                unmatched.append(f"{judgment.path} page {judgment.page} ({judged.where}): {found}")
                key = ("unmatched", judgment.path, judgment.page)  # never in a ranking
            graded[key] = max(judgment.grade, graded.get(key, 0.0))
        grades.append(graded)

    depth = max(k, *NDCG_CUTOFFS)
    retriever = index.retriever(device=device)
    started = time.perf_counter()
    texts = [judged.query for judged in qrels.queries]
    vectors = [
        v
        for start in range(0, len(texts), QUERY_BATCH)
        for v in retriever.encode_queries(texts[start : start + QUERY_BATCH])
    ]
    encode_s = time.perf_counter() - started

    modes: dict[str, ModeResult] = {}
    for mode in ("default", "exact") if exact else ("default",):
        rankings: list[list[tuple[int, int]]] = []
        seconds: list[float] = []
        for query in vectors:
            started = time.perf_counter()
            hits = index.search_embeddings(query, k=depth, exact=mode == "exact")
            seconds.append(time.perf_counter() - started)
            rankings.append([(hit.document_id, hit.page) for hit in hits])
        modes[mode] = ModeResult(score_rankings(rankings, grades, k), seconds)
    return EvalReport(
        index=str(index.path),
        qrels=str(qrels.source),
        k=k,
        modes=modes,
        encode_s=encode_s,
        judgments=sum(len(judged.relevant) for judged in qrels.queries),
        unmatched=unmatched,
        without_relevant=qrels.without_relevant,
    )


def _page_key(matcher: DocumentMatcher, judgment: Judgment, base: Path) -> tuple[int, int] | str:
    """(document id, page) of an indexed page, or why the judgment names none."""
    found = matcher.find(judgment.path, base)
    if isinstance(found, str):
        return found
    if judgment.page > found.pages:
        return f"{found.file} has {found.pages} page(s)"
    return (found.id, judgment.page)
