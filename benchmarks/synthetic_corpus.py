"""Synthetic late-interaction corpora with the structure of real ColPali-family page vectors.

iid random vectors make every search method look good: no two pages share anything, so any
pruning bound is tight. Real page vectors are not like that, and this generator reproduces the
features that matter for search (all parameters in `CorpusParams`, printed by the benchmark):

- topic clusters: each page mixes a few of `topics` shared topic centroids; its content tokens sit
  around page-local "motifs" (a topic centroid plus `motif_spread` noise), plus `token_noise`;
- background: a share of each page's tokens (about a third) sits tightly around a few shared
  `background` directions, as blank margins and plain background patches do;
- near-duplicate pages: a share of pages are small perturbations of an earlier page (a new version,
  a reprint), with a few tokens dropped;
- variable token counts per page (around 356, ColModernVBert's count for a 1024 px page);
- queries of ~20 tokens: ~12 noisy copies of content tokens of one page, plus ~8 "generic" tokens
  (as the models' query-augmentation tokens are) near a few shared directions that lean towards
  the background, nearly the same for every query.

Every page is a pure function of (seed, page number), so a corpus of n pages is the first n pages
of any larger one, and generation streams: pages are written as float16 rows to a memory-mapped
cache file (`cached_corpus`) that later runs reuse and extend. `exact_maxsim_scores` computes
exact MaxSim of queries against every page, chunked, for ground truth.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

CACHE_ENV = "DOCQA_BENCH_CACHE"
DEFAULT_CACHE = Path("/tmp/docqa-bench")
_LAYOUT_PAGES = 1 << 20  # page layouts (counts, duplicate sources) are drawn for this many pages


@dataclass(frozen=True)
class CorpusParams:
    """Everything that decides the vectors; its hash names the cache files."""

    seed: int = 0
    dim: int = 128
    tokens_mean: int = 356  # tokens per page: normal(mean, sd), clipped to [min, max]
    tokens_sd: int = 36
    tokens_min: int = 240
    tokens_max: int = 470
    topics: int = 256  # shared topic centroids
    topics_per_page: int = 3
    motifs_per_page: int = 32  # page-local content clusters, each around one of the page's topics
    motif_spread: float = 1.0  # motif = topic + spread * gaussian/sqrt(dim), normalised (cos to topic ~0.7)
    token_noise: float = 0.5  # content token = motif + noise * gaussian/sqrt(dim) (cos to motif ~0.9)
    background: int = 4  # shared background directions (blank margins, plain background)
    background_share: tuple[float, float] = (0.22, 0.45)  # per page, uniform (mean ~1/3)
    background_noise: float = 0.15  # background token = direction + noise (cos ~0.99)
    duplicate_share: float = 0.10  # pages that are near-duplicates of an earlier page
    duplicate_window: int = 5000  # a duplicate's source is among the previous this-many pages
    duplicate_noise: float = 0.08  # perturbation added to each token of a duplicate (cos ~0.997)
    duplicate_drop: float = 0.08  # up to this share of the source's tokens is dropped
    # Families beyond the default (all off by default: the default corpus is unchanged by them)
    templates: int = 0  # shared page templates (forms, slide decks, letterheads); 0: none
    template_tokens: int = 300  # vectors of one template
    template_share: tuple[float, float] = (0.6, 0.85)  # share of a templated page's tokens from its template
    template_noise: float = 0.1  # a template token on a page = template vector + this noise
    blank_share: float = 0.0  # pages that are nearly blank
    blank_background: float = 0.97  # background share of a nearly blank page
    short_share: float = 0.0  # pages with `short_tokens` vectors (pooled pages)
    short_tokens: int = 50
    long_share: float = 0.0  # pages with `long_tokens` vectors
    long_tokens: int = 1500

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class QueryParams:
    queries: int = 50
    page_tokens: int = 12  # tokens taken from the query's source page (content tokens only)
    query_noise: float = 1.0  # added to each such token (cos to the page token ~0.7)
    generic_tokens: int = 8  # query-augmentation-like tokens, one per generic direction
    generic_background_cos: float = 0.6  # how far each generic direction leans towards a background one
    generic_noise: float = 0.1  # per-query jitter of a generic token (cos ~0.995 between queries)
    seed_offset: int = 0  # a different query set over the same corpus
    # Per-query ranges (used when the maximum is above the value above): drawn uniformly per query
    page_tokens_max: int = 0
    query_noise_max: float = 0.0
    generic_tokens_max: int = 0
    other_topic_tokens: int = 0  # tokens near random topics other than the page's
    sources_max: int = 1  # a query's page tokens come from 1..sources_max pages

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def _layout(p: CorpusParams) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate source or -1, vector count) of every page, drawn once per parameter set."""
    layout = np.random.default_rng([p.seed, 1])
    base = np.clip(
        np.rint(layout.normal(p.tokens_mean, p.tokens_sd, _LAYOUT_PAGES)), p.tokens_min, p.tokens_max
    ).astype(np.int64)
    if p.short_share or p.long_share:
        kind = np.random.default_rng([p.seed, 5]).random(_LAYOUT_PAGES)
        base[kind < p.short_share] = p.short_tokens
        base[(kind >= p.short_share) & (kind < p.short_share + p.long_share)] = p.long_tokens
    is_duplicate = layout.random(_LAYOUT_PAGES) < p.duplicate_share
    is_duplicate[0] = False
    back = layout.integers(1, p.duplicate_window + 1, _LAYOUT_PAGES)
    pages = np.arange(_LAYOUT_PAGES)
    source = np.where(is_duplicate, np.maximum(pages - back, 0), -1)
    source[source == pages] = -1
    drop = layout.random(_LAYOUT_PAGES) * p.duplicate_drop
    counts, copies = base.copy(), np.flatnonzero(source >= 0)
    while True:  # a duplicate has a little fewer vectors than its source (itself maybe a duplicate)
        derived = np.maximum(1, np.rint(counts[source[copies]] * (1.0 - drop[copies]))).astype(np.int64)
        if np.array_equal(derived, counts[copies]):
            break
        counts[copies] = derived
    source.flags.writeable = counts.flags.writeable = False
    return source, counts


def _normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], scale: float, dim: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale / np.sqrt(dim))


class SyntheticCorpus:
    """Pages and queries of one parameter set; page i depends only on (params, i)."""

    def __init__(self, params: CorpusParams = CorpusParams()) -> None:
        self.params = p = params
        shared = np.random.default_rng([p.seed, 0])
        self.topics = _normalise(shared.standard_normal((p.topics, p.dim), dtype=np.float32))
        self.background = _normalise(shared.standard_normal((p.background, p.dim), dtype=np.float32))
        self._generic_raw = shared.standard_normal((64, p.dim), dtype=np.float32)  # sliced per QueryParams
        if p.templates:
            extra = np.random.default_rng([p.seed, 4])
            self.template_vectors = _normalise(  # each template: background-leaning and content-like vectors
                self.topics[extra.integers(0, p.topics, (p.templates, p.template_tokens))]
                + _noise(extra, (p.templates, p.template_tokens, p.dim), 1.0, p.dim)
            )
        self.source, self.counts = _layout(p)  # per page: the page it near-duplicates (or -1); vector count

    def layout(self, pages: int) -> np.ndarray:
        """Vector counts of the first `pages` pages."""
        if pages > len(self.counts):
            raise ValueError(f"at most {len(self.counts):,} pages")
        return self.counts[:pages]

    # --- pages --------------------------------------------------------------------------------
    def page(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim) float32 unit rows, background mask (n,) bool) of page `number`."""
        p = self.params
        source = int(self.source[number])
        rng = np.random.default_rng([p.seed, 2, number])
        if source >= 0:
            vectors, background = self.page(source)
            keep = np.sort(rng.choice(len(vectors), int(self.counts[number]), replace=False))
            vectors = _normalise(vectors[keep] + _noise(rng, (len(keep), p.dim), p.duplicate_noise, p.dim))
            return vectors, background[keep]
        count = int(self.counts[number])
        share = rng.uniform(*p.background_share)
        if p.blank_share and rng.random() < p.blank_share:
            share = p.blank_background
        n_background = int(round(count * share))
        n_template = 0
        if p.templates:
            template = int(rng.integers(p.templates))
            n_template = int(round(count * rng.uniform(*p.template_share)))
            n_background = int(round((count - n_template) * share))  # the rest of the page as usual
        n_content = count - n_background - n_template
        topics = rng.choice(p.topics, p.topics_per_page, replace=False)
        weights = rng.dirichlet(np.ones(p.topics_per_page))
        motif_topics = rng.choice(topics, p.motifs_per_page, p=weights)
        motifs = _normalise(self.topics[motif_topics] + _noise(rng, (p.motifs_per_page, p.dim), p.motif_spread, p.dim))
        motif_weights = rng.dirichlet(np.ones(p.motifs_per_page))  # some motifs cover more of the page
        assigned = rng.choice(p.motifs_per_page, n_content, p=motif_weights)
        content = motifs[assigned] + _noise(rng, (n_content, p.dim), p.token_noise, p.dim)
        background_weights = rng.dirichlet(np.full(p.background, 0.5))
        kinds = rng.choice(p.background, n_background, p=background_weights)
        margins = self.background[kinds] + _noise(rng, (n_background, p.dim), p.background_noise, p.dim)
        parts, mask_parts = [content, margins], [np.zeros(n_content, bool), np.ones(n_background, bool)]
        if n_template:
            rows = rng.choice(p.template_tokens, min(n_template, p.template_tokens), replace=False)
            rows = np.resize(rows, n_template)
            parts.append(
                self.template_vectors[template, rows] + _noise(rng, (n_template, p.dim), p.template_noise, p.dim)
            )
            mask_parts.append(np.ones(n_template, bool))  # template tokens are not the page's own content
        vectors = _normalise(np.concatenate(parts))
        mask = np.concatenate(mask_parts)
        order = rng.permutation(count)  # background patches are spread over the page
        return vectors[order], mask[order]

    def pages(self, start: int, stop: int) -> list[np.ndarray]:
        return [self.page(number)[0] for number in range(start, stop)]

    # --- queries ------------------------------------------------------------------------------
    def generic_directions(self, query: QueryParams) -> np.ndarray:
        p = self.params
        lean = query.generic_background_cos
        other = _normalise(self._generic_raw[: query.generic_tokens])
        towards = self.background[np.arange(query.generic_tokens) % p.background]
        return _normalise(lean * towards + np.sqrt(1.0 - lean**2) * other)

    def queries(self, n_pages: int, query: QueryParams = QueryParams()) -> tuple[np.ndarray, np.ndarray]:
        """(queries (q, tokens, dim) float32, source page of each (q,)) over the first n_pages."""
        p = self.params
        generic = self.generic_directions(query)
        rng = np.random.default_rng([p.seed, 3, n_pages, query.seed_offset])
        sources = rng.integers(0, n_pages, query.queries)
        if not (
            query.page_tokens_max > query.page_tokens
            or query.query_noise_max > query.query_noise
            or query.generic_tokens_max > query.generic_tokens
            or query.other_topic_tokens
            or query.sources_max > 1
        ):
            out = np.empty((query.queries, query.page_tokens + query.generic_tokens, p.dim), np.float32)
            for row, source in enumerate(sources):
                vectors, background = self.page(int(source))
                content = np.flatnonzero(~background)
                if len(content) < query.page_tokens:  # a page that is mostly template or background
                    content = np.arange(len(vectors))
                picked = rng.choice(content, min(query.page_tokens, len(content)), replace=False)
                taken = vectors[picked] + _noise(rng, (len(picked), p.dim), query.query_noise, p.dim)
                jitter = generic + _noise(rng, generic.shape, query.generic_noise, p.dim)
                out[row] = _normalise(np.concatenate([taken, jitter]))
            return out, sources
        return self._varied_queries(n_pages, query, rng, sources)

    def _varied_queries(
        self, n_pages: int, query: QueryParams, rng: np.random.Generator, sources: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Queries whose token counts, noise and number of source pages are drawn per query;
        shorter ones are padded with zero rows (which add 0 to every page's MaxSim)."""
        p = self.params
        most_page = max(query.page_tokens, query.page_tokens_max)
        most_generic = max(query.generic_tokens, query.generic_tokens_max)
        all_generic = self.generic_directions(replace(query, generic_tokens=most_generic))
        out = np.zeros((query.queries, most_page + most_generic + query.other_topic_tokens, p.dim), np.float32)
        for row, source in enumerate(sources):
            n_page = int(rng.integers(query.page_tokens, max(query.page_tokens, query.page_tokens_max) + 1))
            noise = float(rng.uniform(query.query_noise, max(query.query_noise, query.query_noise_max)))
            n_generic = int(rng.integers(query.generic_tokens, most_generic + 1))
            n_sources = int(rng.integers(1, query.sources_max + 1))
            pages = [int(source), *rng.integers(0, n_pages, n_sources - 1).tolist()]
            taken = []
            for index, page in enumerate(pages):
                vectors, background = self.page(page)
                content = np.flatnonzero(~background)
                if len(content) == 0:
                    content = np.arange(len(vectors))
                share = n_page // len(pages) + (index < n_page % len(pages))
                picked = rng.choice(content, min(share, len(content)), replace=False)
                taken.append(vectors[picked] + _noise(rng, (len(picked), p.dim), noise, p.dim))
            others = self.topics[rng.integers(0, p.topics, query.other_topic_tokens)]
            taken.append(others + _noise(rng, others.shape, 1.0, p.dim))
            jitter = all_generic[:n_generic] + _noise(rng, (n_generic, p.dim), query.generic_noise, p.dim)
            tokens = _normalise(np.concatenate([*taken, jitter]))
            out[row, : len(tokens)] = tokens
        return out, sources


# --- the on-disk cache ----------------------------------------------------------------------------
def cache_dir() -> Path:
    path = Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class CorpusFile:
    """The first `pages` pages of a corpus as float16 rows, memory-mapped, with row offsets."""

    params: CorpusParams
    path: Path
    pages: int
    offsets: np.ndarray  # (pages + 1,) row where each page starts; offsets[-1] = total rows
    vectors: np.ndarray = field(repr=False)  # (rows, dim) float16 memmap

    def page(self, number: int) -> np.ndarray:
        return self.vectors[self.offsets[number] : self.offsets[number + 1]]

    def offsets_file(self) -> Path:
        """The row offsets saved as .npy beside the vectors (for tools in other processes)."""
        path = self.path.with_name(f"{self.path.stem}-{self.pages}.offsets.npy")
        if not path.exists():
            np.save(path, self.offsets)
        return path

    def prefix(self, pages: int) -> CorpusFile:
        stop = int(self.offsets[pages])
        return CorpusFile(self.params, self.path, pages, self.offsets[: pages + 1], self.vectors[:stop])


def cached_corpus(params: CorpusParams, pages: int, *, chunk: int = 1000, log=print) -> CorpusFile:
    """The corpus's first `pages` pages, generated once into the cache folder (extended when a
    shorter one is cached) and memory-mapped from there."""
    generator = SyntheticCorpus(params)
    base = cache_dir() / f"corpus-{params.key()}"
    data, done_file = base.with_suffix(".f16"), base.with_suffix(".pages")
    done = int(done_file.read_text()) if done_file.exists() else 0
    offsets = np.concatenate([[0], np.cumsum(generator.layout(max(done, pages)))])
    if done and not _cache_matches(generator, data, offsets, done):
        if log:
            log(f"  {data} was made by another version of this generator: generating it again")
        done = 0
    if done < pages:
        with open(data, "r+b" if data.exists() else "wb") as out:
            out.truncate(int(offsets[done]) * params.dim * 2)  # drop rows of an unfinished run
            out.seek(0, os.SEEK_END)
            for start in range(done, pages, chunk):
                stop = min(pages, start + chunk)
                out.write(np.concatenate(generator.pages(start, stop)).astype(np.float16).tobytes())
                if log and (stop // chunk) % 10 == 0:
                    log(f"  generated {stop:,}/{pages:,} pages")
            out.flush()
            os.fsync(out.fileno())
        done_file.write_text(str(pages))
    vectors = np.memmap(data, dtype=np.float16, mode="r", shape=(int(offsets[pages]), params.dim))
    return CorpusFile(params, data, pages, offsets[: pages + 1], vectors)


def _cache_matches(generator: SyntheticCorpus, data: Path, offsets: np.ndarray, done: int) -> bool:
    """Whether the cached rows are what this code generates (size, and the last page's vectors)."""
    dim = generator.params.dim
    if not data.exists() or data.stat().st_size < int(offsets[done]) * dim * 2:
        return False
    stored = np.memmap(data, dtype=np.float16, mode="r", shape=(int(offsets[done]), dim))
    return np.array_equal(stored[offsets[done - 1] :], generator.page(done - 1)[0].astype(np.float16))


# --- exact ground truth ---------------------------------------------------------------------------
def exact_maxsim_scores(
    corpus: CorpusFile, queries: np.ndarray, *, first_page: int = 0, chunk_rows: int = 1 << 16
) -> np.ndarray:
    """Exact MaxSim of every query against pages [first_page, corpus.pages), (queries, pages) float32.

    All queries' tokens go through one fp32 matmul per chunk of pages (the stored float16 rows
    upcast), then a per-page max and a per-query sum."""
    n_queries, n_tokens, dim = queries.shape
    flat = np.ascontiguousarray(queries.reshape(-1, dim).T, dtype=np.float32)  # (dim, q * t)
    scores = np.empty((n_queries, corpus.pages - first_page), np.float32)
    offsets = corpus.offsets
    start = first_page
    while start < corpus.pages:
        stop = int(np.searchsorted(offsets, offsets[start] + chunk_rows, side="right")) - 1
        stop = min(corpus.pages, max(stop, start + 1))
        low, high = int(offsets[start]), int(offsets[stop])
        block = np.asarray(corpus.vectors[low:high], dtype=np.float32)
        similarities = block @ flat  # (rows, q * t)
        maxima = np.maximum.reduceat(similarities, offsets[start:stop] - low, axis=0)  # (pages, q * t)
        per_page = maxima.reshape(stop - start, n_queries, n_tokens).sum(axis=2)
        scores[:, start - first_page : stop - first_page] = per_page.T
        start = stop
    return scores


def cached_ground_truth(
    corpus: CorpusFile, query: QueryParams = QueryParams(), *, block: int = 5000, log=print
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(queries, their source pages, exact scores (queries, pages)), computed once and cached.

    Scores are written block by block of pages with a progress file, so an interrupted run (the
    100k-page truth takes a while on two cores) resumes where it stopped."""
    base = cache_dir() / f"truth-{corpus.params.key()}-{query.key()}-{corpus.pages}"
    scores_file, done_file = base.with_suffix(".scores.npy"), base.with_suffix(".done")
    queries, sources = SyntheticCorpus(corpus.params).queries(corpus.pages, query)
    done = int(done_file.read_text()) if done_file.exists() and scores_file.exists() else 0
    if done < corpus.pages:
        if done == 0:
            np.lib.format.open_memmap(scores_file, "w+", np.float32, (len(queries), corpus.pages)).flush()
        scores = np.load(scores_file, mmap_mode="r+")
        if log:
            log(f"  exact MaxSim of {len(queries)} queries over {corpus.pages:,} pages (ground truth, cached)")
        for start in range(done, corpus.pages, block):
            stop = min(corpus.pages, start + block)
            part = corpus.prefix(stop)
            scores[:, start:stop] = exact_maxsim_scores(part, queries, first_page=start)
            scores.flush()
            done_file.write_text(str(stop))
            if log and stop < corpus.pages:
                log(f"    {stop:,}/{corpus.pages:,} pages")
        del scores
    return queries, sources, np.load(scores_file)


def recall_at_k(found: list[list[int]], scores: np.ndarray, k: int = 10, tie: float = 1e-4) -> float:
    """Mean share of each query's exact top k that `found` (page numbers, best first) recovers.

    A found page counts when its exact score reaches the k-th best exact score (less `tie`), so
    methods that break float ties differently are not penalised for it."""
    shares = []
    for row, pages in zip(scores, found):
        kth = np.partition(row, -k)[-k] if len(row) >= k else row.min()
        hits = sum(1 for page in set(list(pages)[:k]) if row[page] >= kth - tie)  # a repeat counts once
        shares.append(hits / min(k, len(row)))
    return float(np.mean(shares))


# --- the family of corpora the search targets are checked on ----------------------------------------
def families() -> dict[str, tuple[CorpusParams, QueryParams]]:
    """Structurally different corpora (issue 16), each with its queries; every parameter is printed
    by the benchmark."""
    varied = QueryParams(
        page_tokens=3,
        page_tokens_max=20,
        query_noise=0.4,
        query_noise_max=1.4,
        generic_tokens=0,
        generic_tokens_max=12,
        sources_max=3,
    )
    return {
        "motifs": (CorpusParams(), QueryParams()),  # few topics with page-local motifs (the original)
        "topics": (
            CorpusParams(
                topics=4000,
                motif_spread=0.0,
                tokens_mean=350,
                tokens_sd=40,
                tokens_min=280,
                tokens_max=420,
                background_share=(0.25, 0.35),
                duplicate_share=0.03,
            ),
            QueryParams(page_tokens=10, generic_tokens=6, other_topic_tokens=4),
        ),
        "templates": (CorpusParams(seed=2, templates=300, topics=1000), QueryParams()),
        "background": (
            CorpusParams(seed=3, background_share=(0.5, 0.7), blank_share=0.1),
            QueryParams(page_tokens=8, generic_tokens=12),
        ),
        "lengths": (CorpusParams(seed=4, short_share=0.4, long_share=0.15), QueryParams()),
        "queries": (CorpusParams(seed=5), varied),
    }


def sweep(count: int, seed: int = 0) -> dict[str, tuple[CorpusParams, QueryParams]]:
    """`count` corpora with generator parameters drawn at random (seeded), so that no hand-picked
    setting is the only one that passes."""
    rng = np.random.default_rng([seed, 99])
    drawn = {}
    for number in range(count):
        low = float(rng.uniform(0.0, 0.5))
        corpus = CorpusParams(
            seed=100 + number,
            topics=int(rng.choice([32, 256, 1000, 4000])),
            topics_per_page=int(rng.integers(1, 6)),
            motifs_per_page=int(rng.integers(4, 64)),
            motif_spread=float(rng.uniform(0.0, 1.5)),
            token_noise=float(rng.uniform(0.2, 0.9)),
            background=int(rng.integers(1, 9)),
            background_share=(low, low + float(rng.uniform(0.0, 0.3))),
            duplicate_share=float(rng.uniform(0.0, 0.2)),
            templates=int(rng.choice([0, 0, 50, 500])),
            template_share=(0.3, 0.8),
            blank_share=float(rng.choice([0.0, 0.05, 0.2])),
            short_share=float(rng.choice([0.0, 0.3])),
            long_share=float(rng.choice([0.0, 0.1])),
        )
        queries = QueryParams(
            page_tokens=int(rng.integers(3, 12)),
            page_tokens_max=20,
            query_noise=float(rng.uniform(0.3, 0.8)),
            query_noise_max=1.4,
            generic_tokens=0,
            generic_tokens_max=int(rng.integers(0, 13)),
            other_topic_tokens=int(rng.integers(0, 5)),
            sources_max=int(rng.integers(1, 4)),
        )
        drawn[f"sweep-{number}"] = (corpus, queries)
    return drawn
