"""`docqa ingest`, `docqa remove`, `docqa info`: parse, call the library, print."""

from __future__ import annotations

import argparse
import sys

from ..config import IngestSettings, WalkOptions
from ..ingest.skipped import summary_lines as skipped_summary
from .common import EXIT_OK, EXIT_PARTIAL, open_index, print_json


def ingest_command(args: argparse.Namespace) -> int:
    options = {
        name: value
        for name, value in (
            ("mode", args.index_mode),
            ("pool_factor", args.pool_factor),
            ("vector_type", args.vector_type),
        )
        if value is not None
    }
    settings = IngestSettings(
        model=args.model,
        device=args.device,
        batch_size=args.batch_size,
        image_edge=args.image_edge,
        engine=args.engine,
        sync=args.sync,
        tags=dict(args.tag),
        progress=sys.stderr.isatty(),
        ray=args.ray,
        ray_encoders=args.ray_encoders,
        trust_remote_code=args.trust_remote_code,
        walk=WalkOptions(hidden=args.hidden, include=args.include, exclude=args.exclude),
    )
    if args.shards:
        from ..cluster.shards import ingest_sharded

        report = ingest_sharded(args.shards, args.paths, settings)
    else:
        report = open_index(args.index, create=True, options=options).ingest(args.paths, settings)
    if args.json:
        print_json(report.to_json())
    else:
        print(
            f"{report.index}: {report.added} added, {report.updated} updated, {report.unchanged} "
            f"unchanged, {report.removed} removed, {report.failed} failed, {report.skipped} skipped; "
            f"{report.pages_added} pages in {report.seconds:.1f} s"
        )
        times = report.timings
        print(
            f"  time: encode {times.encode_s:.1f} s, store {times.store_s:.1f} s; in background threads: "
            f"render {times.render_s:.1f} s, preprocess {times.preprocess_s:.1f} s"
        )
        for duplicate in report.duplicate_files:
            print(f"  same content as {duplicate.same_as}, kept as another path of it: {duplicate.path}")
        for path, pages in report.resumed:
            print(f"  resumed {pages:,} pages of {path} (encoded by an earlier ingest that stopped)")
        for failure in report.failures:
            print(f"  failed: {failure.path}: {failure.error}", file=sys.stderr)
        for line in skipped_summary(report.skipped_files):
            print(line, file=sys.stderr)
    return EXIT_PARTIAL if report.failed else EXIT_OK


def info_command(args: argparse.Namespace) -> int:
    info = open_index(args.index).info()
    if args.json:
        print_json(info.to_json())
    else:
        print(
            f"index:     {info.index}\nmodel:     {info.model or '(none yet)'}\n"
            f"documents: {info.documents}\npages:     {info.pages}\n"
            f"on disk:   {info.bytes_on_disk / 1e6:.1f} MB\nsearch:    {_search_line(info.search)}"
        )
    return EXIT_OK


def _search_line(stats: dict) -> str:
    """How searches run, and how much of exact MaxSim's top 10 the index estimates it finds."""
    if not stats:
        return "exact (every page scored)"
    if not stats["candidate_stage"]:
        return "every page scored (too few pages for a candidate stage yet)"
    line = f"two-stage, reranking {stats['rerank']:,} pages"
    if "recall_estimate" not in stats:
        return f"{line}; no recall estimate yet"
    return (
        f"{line}; estimated recall@10 {stats['recall_estimate']:.2f}, top-1 {stats['top1_estimate']:.2f}"
        f" ({stats['estimate_queries']} pseudo-queries over {stats['estimate_sample_pages']:,}"
        f" of {stats['estimated_at_pages']:,} pages)"
    )


def remove_command(args: argparse.Namespace) -> int:
    report = open_index(args.index).remove(args.paths)
    if args.json:
        print_json(report.to_json())
    else:
        print(f"{report.index}: removed {len(report.removed)} path(s)")
        for moved in report.moved:
            print(f"  {moved.path}: its pages stay indexed at {moved.to} (the same content)")
        for path in report.not_found:
            print(f"  not in the index: {path}", file=sys.stderr)
    return EXIT_PARTIAL if report.not_found else EXIT_OK
