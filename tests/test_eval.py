"""Evaluation: metrics against a hand computation, qrels readers (JSONL, BEIR folders), page matching,
and `docqa eval` end to end with a tiny real retriever."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from helpers.documents import make_image, make_pdf

from docqa import DocIndex
from docqa.cli.main import main
from docqa.errors import MissingDependencyError, QrelsError
from docqa.eval import (
    DocumentMatcher,
    IndexedDocument,
    Judgment,
    dcg,
    ndcg_at,
    read_qrels,
    recall_at,
    reciprocal_rank_at,
    score_rankings,
)

# --- metrics: a known answer worked out by hand -------------------------------------------------
# Three queries, k = 5 for recall/MRR (nDCG always at 5 and 10). Pages are letters; z*/y* are
# retrieved pages nobody judged (gain 0).
#
# Query 1: grades a=3, b=2, c=1; ranking z1 b a z2 z3 z4 z5 c z6 z7 (b at rank 2, a at 3, c at 8).
#   DCG@5   = 2/log2(3) + 3/log2(4)              = 1.2618595 + 1.5       = 2.7618595
#   IDCG@5  = 3/log2(2) + 2/log2(3) + 1/log2(4)  = 3 + 1.2618595 + 0.5   = 4.7618595
#   nDCG@5  = 2.7618595 / 4.7618595                                      = 0.5799960
#   DCG@10  = 2.7618595 + 1/log2(9)              = 2.7618595 + 0.3154649 = 3.0773244
#   nDCG@10 = 3.0773244 / 4.7618595 (IDCG@10 = IDCG@5: only 3 relevant)  = 0.6462443
#   recall@5 = |{b, a}| / 3 = 2/3;  MRR@5 = 1/2 (first relevant, b, at rank 2)
# Query 2: grade d=1; ranking retrieves none of it: nDCG@5 = nDCG@10 = recall@5 = MRR@5 = 0.
# Query 3: grades e=2, u=1 (u is never retrieved); ranking y1 y2 y3 e y4 ... (e at rank 4).
#   DCG@5 = DCG@10 = 2/log2(5) = 0.8613531;  IDCG = 2/log2(2) + 1/log2(3) = 2 + 0.6309298 = 2.6309298
#   nDCG@5 = nDCG@10 = 0.8613531 / 2.6309298 = 0.3273950
#   recall@5 = 1/2;  MRR@5 = 1/4
# Means over the 3 queries:
#   nDCG@5  = (0.5799960 + 0 + 0.3273950) / 3 = 0.3024637
#   nDCG@10 = (0.6462443 + 0 + 0.3273950) / 3 = 0.3245464
#   recall@5 = (2/3 + 0 + 1/2) / 3 = 7/18 = 0.3888889
#   MRR@5    = (1/2 + 0 + 1/4) / 3 = 1/4  = 0.25
RANKINGS = [
    ["z1", "b", "a", "z2", "z3", "z4", "z5", "c", "z6", "z7"],
    ["x1", "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10"],
    ["y1", "y2", "y3", "e", "y4", "y5", "y6", "y7", "y8", "y9"],
]
GRADES = [{"a": 3, "b": 2, "c": 1}, {"d": 1}, {"e": 2, "u": 1}]


def test_metrics_match_a_hand_computation():
    assert ndcg_at(RANKINGS[0], GRADES[0], 5) == pytest.approx(0.5799960, abs=1e-7)
    assert ndcg_at(RANKINGS[0], GRADES[0], 10) == pytest.approx(0.6462443, abs=1e-7)
    assert recall_at(RANKINGS[0], GRADES[0], 5) == pytest.approx(2 / 3)
    assert recall_at(RANKINGS[0], GRADES[0], 10) == 1.0
    assert reciprocal_rank_at(RANKINGS[0], GRADES[0], 5) == 0.5
    assert reciprocal_rank_at(RANKINGS[0], GRADES[0], 1) == 0.0  # b is at rank 2, outside the top 1
    assert (
        ndcg_at(RANKINGS[1], GRADES[1], 10),
        recall_at(RANKINGS[1], GRADES[1], 5),
        reciprocal_rank_at(RANKINGS[1], GRADES[1], 5),
    ) == (0.0, 0.0, 0.0)
    assert ndcg_at(RANKINGS[2], GRADES[2], 5) == pytest.approx(0.3273950, abs=1e-7)
    assert reciprocal_rank_at(RANKINGS[2], GRADES[2], 5) == 0.25

    metrics = score_rankings(RANKINGS, GRADES, k=5)
    assert metrics.queries == 3
    assert metrics.ndcg_at_5 == pytest.approx(0.3024637, abs=1e-7)
    assert metrics.ndcg_at_10 == pytest.approx(0.3245464, abs=1e-7)
    assert metrics.recall_at_k == pytest.approx(7 / 18)
    assert metrics.mrr_at_k == pytest.approx(0.25)
    assert set(metrics.to_json()) == {"ndcg@5", "ndcg@10", "recall@k", "mrr@k", "queries"}


def test_ideal_dcg_counts_relevant_pages_beyond_the_cutoff():
    # 12 pages of grade 1; the ranking holds 10 of them: ideal DCG@10 is also 10 ones, so nDCG@10 = 1,
    # while recall@10 = 10/12. A ranking of the same pages in another order changes nothing.
    grades = {f"p{i}": 1 for i in range(12)}
    ranking = [f"p{i}" for i in range(10)]
    assert ndcg_at(ranking, grades, 10) == pytest.approx(1.0)
    assert recall_at(ranking, grades, 10) == pytest.approx(10 / 12)
    # Graded: the best page last in the top 5 instead of first.
    grades = {"g3": 3, "g1": 1}
    assert ndcg_at(["g1", "n", "n2", "n3", "g3"], grades, 5) == pytest.approx(
        (1 + 3 / math.log2(6)) / (3 + 1 / math.log2(3))
    )
    assert dcg([3, 2, 0, 1]) == pytest.approx(3 + 2 / math.log2(3) + 1 / math.log2(5))
    assert ndcg_at(["n"], {}, 5) == 0.0  # no relevant page: defined as 0, not a division by zero


# --- JSONL reader -------------------------------------------------------------------------------
def _write_lines(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_jsonl_reader_defaults_grades_and_skipped_queries(tmp_path):
    path = _write_lines(
        tmp_path / "q.jsonl",
        [
            {
                "query": "total due",
                "relevant": [
                    {"path": "a.pdf", "page": 2, "grade": 2},
                    {"path": "/abs/b.png"},
                    {"path": "c.pdf", "page": 1, "grade": 0},
                ],
            },
            "",
            {"query": "no answer anywhere", "relevant": []},
            {"query": "only judged non-relevant", "relevant": [{"path": "a.pdf", "page": 1, "grade": 0}]},
            {"query": "fractional", "relevant": [{"path": "sub/d.pdf", "page": 3, "grade": 0.5}]},
        ],
    )
    qrels = read_qrels(path)
    assert qrels.base == tmp_path and qrels.without_relevant == 2
    assert [q.query for q in qrels.queries] == ["total due", "fractional"]
    assert qrels.queries[0].relevant == (Judgment("a.pdf", 2, 2.0), Judgment("/abs/b.png", 1, 1.0))
    assert qrels.queries[1].relevant == (Judgment("sub/d.pdf", 3, 0.5),)
    assert qrels.queries[1].where == f"{path}:5"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"relevant": []}, '"query" must be a non-empty string'),
        ({"query": "  ", "relevant": []}, '"query" must be a non-empty string'),
        ({"query": "q", "relevant": {"path": "a.pdf"}}, '"relevant" must be a list'),
        ({"query": "q", "relevant": ["a.pdf"]}, "relevant[0]: expected an object"),
        ({"query": "q", "relevant": [{"page": 1}]}, '"path" must be a non-empty string'),
        ({"query": "q", "relevant": [{"path": "a.pdf", "page": 0}]}, '"page" must be a whole number from 1'),
        ({"query": "q", "relevant": [{"path": "a.pdf", "page": "2"}]}, '"page" must be a whole number'),
        ({"query": "q", "relevant": [{"path": "a.pdf", "page": True}]}, '"page" must be a whole number'),
        ({"query": "q", "relevant": [{"path": "a.pdf", "grade": -1}]}, "grade must be a number >= 0"),
        ({"query": "q", "relevant": [{"path": "a.pdf", "grade": "high"}]}, "grade must be a number >= 0"),
    ],
)
def test_jsonl_reader_names_file_and_line_of_malformed_input(tmp_path, line, message):
    path = _write_lines(tmp_path / "q.jsonl", [{"query": "fine", "relevant": [{"path": "a.pdf"}]}, line])
    with pytest.raises(QrelsError) as error:
        read_qrels(path)
    assert str(error.value).startswith(f"{path}:2: ") and message in str(error.value)


def test_jsonl_reader_refuses_missing_empty_and_binary_files(tmp_path):
    with pytest.raises(QrelsError, match="no such file or folder"):
        read_qrels(tmp_path / "missing.jsonl")
    with pytest.raises(QrelsError, match="no judged queries"):
        read_qrels(_write_lines(tmp_path / "empty.jsonl", []))
    with pytest.raises(QrelsError, match=r"no judged queries \(1 without any relevant page\)"):
        read_qrels(_write_lines(tmp_path / "none.jsonl", [{"query": "q", "relevant": []}]))
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(QrelsError, match="not UTF-8"):
        read_qrels(tmp_path / "binary.jsonl")


# --- BEIR folders -------------------------------------------------------------------------------
def test_beir_folder_of_jsonl_and_tsv_uses_the_test_split(tmp_path):
    folder = tmp_path / "beir"
    folder.mkdir()
    _write_lines(
        folder / "queries.jsonl",
        [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}, {"_id": "q3", "text": "never judged"}],
    )
    _write_lines(
        folder / "corpus.jsonl",
        [{"_id": "c1", "path": "docs/a.pdf", "page": 2}, {"_id": "c2", "title": "no path: the id names the file"}],
    )
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\tc1\t2\nq1\tc2\t1\nq2\tc2\t1\nq2\tc1\t0\n"
    )
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq3\tc1\t1\n")
    qrels = read_qrels(folder)
    assert qrels.base == folder and qrels.without_relevant == 1  # q3 is judged only in train
    assert [(q.query, q.relevant) for q in qrels.queries] == [
        ("first", (Judgment("docs/a.pdf", 2, 2.0), Judgment("c2", 1, 1.0))),
        ("second", (Judgment("c2", 1, 1.0),)),
    ]


def test_beir_folder_in_vidore_parquet_layout(tmp_path):
    import pyarrow as pa  # a test dependency (pyproject's `test` extra), optional for users
    import pyarrow.parquet as pq

    folder = tmp_path / "docvqa_test_subsampled_beir"
    for part in ("corpus", "queries", "qrels"):
        (folder / part).mkdir(parents=True)
    # As ViDoRe publishes it: int ids, hyphenated names, page images as {"bytes", "path"} structs.
    pq.write_table(
        pa.table({"corpus-id": [0, 1, 2], "image": [{"bytes": b"\x89PNG...", "path": None}] * 3}),
        folder / "corpus" / "test-00000-of-00001.parquet",
    )
    pq.write_table(
        pa.table({"query-id": [10, 11], "query": ["what is the total?", "who signed?"]}),
        folder / "queries" / "test-00000-of-00001.parquet",
    )
    pq.write_table(
        pa.table({"query-id": [10, 11, 11], "corpus-id": [2, 0, 1], "score": [1, 1, 2]}),
        folder / "qrels" / "test-00000-of-00001.parquet",
    )
    qrels = read_qrels(folder)
    assert [(q.query, q.relevant) for q in qrels.queries] == [
        ("what is the total?", (Judgment("2", 1, 1.0),)),
        ("who signed?", (Judgment("0", 1, 1.0), Judgment("1", 1, 2.0))),
    ]

    # ViDoRe v3 writes the ids with underscores.
    pq.write_table(
        pa.table({"query_id": [10, 11], "corpus_id": [2, 0], "score": [1, 1]}),
        folder / "qrels" / "test-00000-of-00001.parquet",
    )
    assert [q.relevant for q in read_qrels(folder).queries] == [(Judgment("2", 1, 1.0),), (Judgment("0", 1, 1.0),)]


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    folder = tmp_path / "beir"
    (folder / "queries").mkdir(parents=True)
    (folder / "queries" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    _write_lines(folder / "qrels.jsonl", [{"query-id": 1, "corpus-id": 1, "score": 1}])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes `import pyarrow.parquet` fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'docqa\[eval\]'"):
        read_qrels(folder)


@pytest.mark.parametrize(
    "qrels_tsv, message",
    [
        ("query-id\tcorpus-id\tscore\nq9\tc1\t1\n", "qrels/test.tsv:2: query-id q9 is not in the queries"),
        ("query-id\tcorpus-id\tscore\nq1\tc1\n", "qrels/test.tsv:2: expected 3 tab-separated columns"),
        ("query-id\tdoc\tscore\nq1\tc1\t1\n", "qrels/test.tsv:2: missing column corpus-id / corpus_id / _id"),
        ("query-id\tcorpus-id\tscore\nq1\tc1\tgood\n", "qrels/test.tsv:2: the grade must be a number"),
    ],
)
def test_beir_folder_names_the_file_and_line_of_malformed_input(tmp_path, qrels_tsv, message):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    _write_lines(folder / "queries.jsonl", [{"_id": "q1", "text": "first"}])
    (folder / "qrels" / "test.tsv").write_text(qrels_tsv)
    with pytest.raises(QrelsError) as error:
        read_qrels(folder)
    assert message in str(error.value) and str(folder) in str(error.value)


def test_beir_folder_without_its_parts_or_with_unlabelled_splits(tmp_path):
    folder = tmp_path / "beir"
    folder.mkdir()
    with pytest.raises(QrelsError, match="no queries in this BEIR folder"):
        read_qrels(folder)
    _write_lines(folder / "queries.jsonl", [{"_id": "q1", "text": "first"}])
    with pytest.raises(QrelsError, match="no qrels in this BEIR folder"):
        read_qrels(folder)
    (folder / "qrels").mkdir()
    for split in ("train", "dev"):
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tc1\t1\n")
    with pytest.raises(QrelsError, match=r"several splits \(dev, train\) and no test split"):
        read_qrels(folder)


# --- judged pages -> indexed documents ----------------------------------------------------------
def test_document_matcher(tmp_path):
    docs = [
        IndexedDocument(1, tmp_path / "docs" / "reports" / "q1.pdf", 3),
        IndexedDocument(2, tmp_path / "docs" / "q1.pdf", 1),
        IndexedDocument(3, tmp_path / "docs" / "scans" / "17.png", 1),
        IndexedDocument(4, tmp_path / "docs" / "scans" / "invoice.pdf", 2),
    ]
    matcher = DocumentMatcher(docs)
    base = tmp_path / "qrels"
    assert matcher.find(str(tmp_path / "docs" / "q1.pdf"), base).id == 2  # absolute
    assert matcher.find("../docs/reports/q1.pdf", base).id == 1  # relative to the qrels' folder
    assert matcher.find("reports/q1.pdf", base).id == 1  # trailing parts of an indexed path
    assert matcher.find("invoice.pdf", base).id == 4  # a bare, unique file name
    assert matcher.find("17", base).id == 3  # a BEIR corpus id: the file name before its extension
    assert matcher.find("q1.pdf", base).startswith("ambiguous: 2 indexed documents match")
    assert matcher.find("invoice", base).id == 4  # a bare name without extension matches the stem too
    assert matcher.find("nothing", base) == "no indexed document matches"
    assert matcher.find(str(tmp_path / "elsewhere" / "invoice.pdf"), base) == "no indexed document at that path"
    assert matcher.find("other/invoice.pdf", base) == "no indexed document matches"
    assert matcher.find("bad\x00name.pdf", base) == "no indexed document matches"  # not an exception


# --- the command, end to end with a tiny real retriever -----------------------------------------
def test_eval_command_matches_metrics_computed_from_search(tmp_path, capsys, retriever_checkpoint):
    docs = tmp_path / "docs"
    q1, q2 = make_pdf(docs / "reports" / "q1.pdf", 3, title="q1"), make_pdf(docs / "q2.pdf", 2, title="q2")
    receipt = make_image(docs / "scans" / "receipt.png", text="receipt")
    index_dir = str(tmp_path / "idx")
    assert main(["ingest", str(docs), "--index", index_dir, "--model", str(retriever_checkpoint)]) == 0
    queries = ["q1 page 2", "receipt total", "revenue line 3"]
    qrels = _write_lines(
        tmp_path / "judged" / "qrels.jsonl",
        [
            {
                "query": queries[0],
                "relevant": [
                    {"path": "../docs/reports/q1.pdf", "page": 2, "grade": 2},
                    {"path": "q2.pdf", "page": 1, "grade": 1},
                ],
            },
            {"query": queries[1], "relevant": [{"path": str(receipt), "page": 1}]},
            {
                "query": queries[2],
                "relevant": [
                    {"path": "reports/q1.pdf", "page": 3, "grade": 3},
                    {"path": "missing.pdf", "page": 1},
                    {"path": "q2.pdf", "page": 9},
                ],
            },
            {"query": "judged, but nothing relevant", "relevant": []},
        ],
    )
    capsys.readouterr()
    code = main(["eval", str(qrels), "--index", index_dir, "-k", "3", "--exact", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1  # finished, but two judgments name no indexed page
    assert set(report) == {
        "index",
        "qrels",
        "k",
        "gain",
        "default",
        "exact",
        "encode_s",
        "judgments",
        "unmatched_judgments",
        "queries_without_relevant",
        "notes",
    }
    assert (report["k"], report["judgments"], report["unmatched_judgments"], report["queries_without_relevant"]) == (
        3,
        6,
        2,
        1,
    )
    assert "missing.pdf page 1" in report["notes"][0] and f"{q2} has 2 page(s)" in report["notes"][0]

    # The same numbers from DocIndex.search, one query at a time, with the judgments mapped by hand.
    index = DocIndex.open(index_dir)
    grades = [
        {(str(q1), 2): 2, (str(q2), 1): 1},
        {(str(receipt), 1): 1},
        {(str(q1), 3): 3, ("missing.pdf", 1): 1, ("q2.pdf", 9): 1},
    ]
    for mode in ("default", "exact"):
        rankings = [
            [(hit.path, hit.page) for hit in index.search(query, k=10, exact=mode == "exact")] for query in queries
        ]
        expected = score_rankings(rankings, grades, k=3).to_json()
        assert set(report[mode]) == set(expected) | {"search_s", "latency_ms_p50"}
        assert {key: report[mode][key] for key in expected} == pytest.approx(expected, abs=1e-9)
    assert 0 < report["default"]["ndcg@10"] < 1  # 2 of 6 relevant pages can never be found


def test_eval_command_on_a_beir_folder_and_its_errors(tmp_path, capsys, retriever_checkpoint):
    docs = tmp_path / "pages"  # ViDoRe corpus images saved as <corpus-id>.png, then ingested
    for corpus_id in range(3):
        make_image(docs / f"{corpus_id}.png", text=f"page {corpus_id}")
    index_dir = str(tmp_path / "idx")
    assert main(["ingest", str(docs), "--index", index_dir, "--model", str(retriever_checkpoint)]) == 0
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    _write_lines(beir / "queries.jsonl", [{"_id": "1", "text": "page 0"}, {"_id": "2", "text": "page 2"}])
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t0\t1\n2\t2\t1\n2\t1\t1\n")
    capsys.readouterr()
    assert main(["eval", str(beir), "--index", index_dir]) == 0  # every corpus id names an indexed page
    out = capsys.readouterr().out
    assert "2 queries" in out and re.search(r"^default +[01]\.\d{4} +[01]\.\d{4} +[01]\.\d{4} +[01]\.\d{4}", out, re.M)

    def fails(*argv: str) -> str:
        code = main(list(argv))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        return err

    assert "no such file or folder" in fails("eval", str(tmp_path / "nope.jsonl"), "--index", index_dir)
    bad = _write_lines(tmp_path / "bad.jsonl", [{"query": "q", "relevant": []}, "{oops"])
    assert f"{bad}:2: not valid JSON" in fails("eval", str(bad), "--index", index_dir)
    assert "no judged queries" in fails("eval", str(_write_lines(tmp_path / "empty.jsonl", [])), "--index", index_dir)
    good = _write_lines(tmp_path / "good.jsonl", [{"query": "q", "relevant": [{"path": "0.png"}]}])
    assert "no index" in fails("eval", str(good), "--index", str(tmp_path / "no-such-index"))
    DocIndex.open(str(tmp_path / "empty-idx"), create=True).close()
    assert "has no documents yet" in fails("eval", str(good), "--index", str(tmp_path / "empty-idx"))
