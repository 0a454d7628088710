"""The llm judge: recorded judge transcripts through the verdict parser; a real HTTP endpoint
on 127.0.0.1 (our own, counting requests server-side) for caching, retries, repair and key
handling; and `transformers serve` with a tiny random model, whose nonsense must end as judge
errors or misses, never as a pass."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from judge_server import JudgeServer

from l2smerge.eval.judges import COVERED, MISSED, UNSUPPORTED, JudgeRequest, make_judge
from l2smerge.eval.judges.llm import JUDGE_REPAIR, PROMPT_HASH, JudgeUnavailable
from l2smerge.eval.judges.verdicts import MalformedVerdicts, parse_verdicts, point_status
from l2smerge.eval.tasks import KeyPoint
from l2smerge.util.errors import L2SError

TRANSCRIPTS = Path(__file__).parent / "data" / "judge_transcripts.jsonl"
SECRET = "sk-judge-secret-0123456789abcdef"
POINTS = (
    KeyPoint("30 days", ("30 days",)),
    KeyPoint("original packaging", ("original packaging", "unopened box")),
    KeyPoint("free return shipping", ("free return shipping",)),
)
RESPONSES = [
    "Return within 30 days in the original packaging.",
    "Returns: 30 days. Free return shipping.",
    "Keep the receipt.",
]


def transcripts() -> list[dict]:
    return [json.loads(line) for line in TRANSCRIPTS.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("case", transcripts(), ids=lambda c: c["name"])
def test_recorded_transcripts(case):
    n = len(case["key_points"])
    expect = case["expect"]
    if "malformed" in expect:
        with pytest.raises(MalformedVerdicts) as info:
            parse_verdicts(case["output"], n)
        assert expect["malformed"] in str(info.value)
        return
    verdicts = parse_verdicts(case["output"], n)
    assert [point_status(v, case["response"]) for v in verdicts] == expect["statuses"]


def test_transcripts_cover_both_outcomes():
    cases = transcripts()
    assert sum("malformed" in c["expect"] for c in cases) >= 8
    statuses = {s for c in cases for s in c["expect"].get("statuses", [])}
    assert statuses == {COVERED, MISSED, UNSUPPORTED}


def judge(server: JudgeServer, cache: Path, **options):
    defaults = dict(url=server.url, model="judge-1", backoff=0.0, concurrency=2)
    return make_judge("llm", cache_dir=cache, **{**defaults, **options})


def run(judge_, responses=RESPONSES, points=POINTS) -> list:
    requests = [JudgeRequest(r, points) for r in responses]
    try:
        out = dict(judge_.judge(requests))
    finally:
        judge_.close()
    return [out[i] for i in range(len(requests))]


def test_verdicts_and_cache_hits_counted_on_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("L2SMERGE_JUDGE_API_KEY", SECRET)
    with JudgeServer() as server:
        first = run(judge(server, tmp_path))
        assert server.requests == 3  # one request per response, all its key points in it
        assert [j.covered for j in first] == [
            [True, True, False],
            [True, False, True],
            [False, False, False],
        ]
        assert first[0].verdicts[0].evidence == "30 days"
        assert [j.requests for j in first] == [1, 1, 1]
        assert first[0].prompt_tokens == 100 and first[0].completion_tokens == 20
        assert server.auth == [f"Bearer {SECRET}"] * 3
        body = server.bodies[0]
        assert body["model"] == "judge-1" and body["temperature"] == 0
        assert (
            "1. 30 days\n2. original packaging (also phrased: unopened box)\n3. free"
            in (body["messages"][1]["content"])
        )

        again = run(judge(server, tmp_path))  # a rerun: a new judge, the same cache
        assert server.requests == 3
        assert [j.covered for j in again] == [j.covered for j in first]
        assert [j.requests for j in again] == [0, 0, 0]

        more = (*POINTS, KeyPoint("keep the receipt", ("keep the receipt",)))
        extended = run(judge(server, tmp_path), points=more)
        assert server.requests == 6  # only the new point is asked, once per response
        assert all("1. keep the receipt" in b["messages"][1]["content"] for b in server.bodies[3:])
        assert [j.covered[-1] for j in extended] == [False, False, True]

        run(judge(server, tmp_path, model="judge-2"))  # another judge model: asked again
        assert server.requests == 9


def test_malformed_output_is_sent_back_then_repaired(tmp_path):
    with JudgeServer(outputs=["Sure! Here are the verdicts."]) as server:
        (judgement,) = run(judge(server, tmp_path, concurrency=1), responses=RESPONSES[:1])
    assert judgement.covered == [True, True, False] and judgement.requests == 2
    retry = server.bodies[1]["messages"]
    assert retry[2] == {"role": "assistant", "content": "Sure! Here are the verdicts."}
    assert retry[3]["content"].startswith(JUDGE_REPAIR.split("{")[0])
    assert "not one JSON object" in retry[3]["content"]


def test_malformed_for_good_is_a_judge_error_never_a_pass_and_not_cached(tmp_path):
    always_covered_garbage = json.dumps({"verdicts": [{"point": 1, "covered": True}]})
    with JudgeServer(outputs=[always_covered_garbage] * 3) as server:
        (judgement,) = run(judge(server, tmp_path, malformed_retries=2), responses=RESPONSES[:1])
        assert server.requests == 3
        assert judgement.verdicts is None and judgement.covered is None
        assert "malformed judge output after 3 request(s)" in judgement.error
        assert "no verdict for key point(s) 2, 3" in judgement.error
        (again,) = run(judge(server, tmp_path), responses=RESPONSES[:1])
        assert server.requests == 4 and again.covered == [True, True, False]


def test_covered_with_evidence_not_in_the_response_is_not_covered(tmp_path):
    invented = json.dumps(
        {
            "verdicts": [
                {"point": 1, "covered": True, "evidence": "returns accepted for a month"},
                {"point": 2, "covered": True, "evidence": "the original packaging"},
                {"point": 3, "covered": True, "evidence": ""},
            ]
        }
    )
    with JudgeServer(outputs=[invented]) as server:
        (judgement,) = run(judge(server, tmp_path), responses=RESPONSES[:1])
    assert [v.status for v in judgement.verdicts] == [UNSUPPORTED, COVERED, UNSUPPORTED]
    assert judgement.covered == [False, True, False]


def test_http_errors_are_retried_with_backoff(tmp_path):
    with JudgeServer(statuses=[429, 500, 503]) as server:
        results = run(judge(server, tmp_path, concurrency=1, retries=3), responses=RESPONSES[:1])
    assert server.requests == 4 and results[0].covered == [True, True, False]


def test_endpoint_down_stops_the_run_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("L2SMERGE_JUDGE_API_KEY", SECRET)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge_ = make_judge(
        "llm", url=f"http://127.0.0.1:{port}/v1", model="m", retries=1, backoff=0.0,
        cache_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(JudgeUnavailable, match=r"failed after 1 retries \(ConnectError\)") as info:
        run(judge_)
    assert SECRET not in str(info.value)


def test_key_echoed_by_the_server_is_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)
    with JudgeServer(statuses=[401], echo_auth=True) as server:
        with pytest.raises(JudgeUnavailable, match="HTTP 401") as info:
            run(judge(server, tmp_path, api_key_env="MY_JUDGE_KEY"))
    assert SECRET not in str(info.value) and "[redacted]" in str(info.value)
    assert isinstance(info.value, L2SError)
    with JudgeServer(statuses=[400], echo_auth=True) as server:
        results = run(judge(server, tmp_path, api_key_env="MY_JUDGE_KEY", concurrency=1))
    assert results[0].verdicts is None and "HTTP 400" in results[0].error
    assert SECRET not in results[0].error and "[redacted]" in results[0].error
    assert [r.covered for r in results[1:]] == [[True, False, True], [False, False, False]]


def test_no_request_for_empty_or_overlong_responses(tmp_path):
    with JudgeServer() as server:
        results = run(judge(server, tmp_path, max_chars=60), responses=["  ", "x" * 61])
        assert server.requests == 0
    assert results[0].covered == [False, False, False]
    assert results[1].verdicts is None and "over the judge's limit of 60" in results[1].error


def test_bad_options():
    for options, message in [
        ({"url": None, "model": "m"}, "needs --judge-url"),
        ({"url": "http://x/v1", "model": ""}, "needs --judge-model"),
        ({"url": "ftp://x", "model": "m"}, "must be an http"),
        ({"url": "http://x/v1", "model": "m", "retries": -1}, "retries at least 0"),
    ]:
        with pytest.raises(L2SError, match=message):
            make_judge("llm", **options)
    with pytest.raises(L2SError, match="unknown judge 'exact'"):
        make_judge("exact")


def test_info_names_model_and_prompt(tmp_path):
    with JudgeServer() as server:
        judge_ = judge(server, tmp_path)
        judge_.close()
    assert judge_.info() == {"judge": "llm", "judge_model": "judge-1", "judge_prompt": PROMPT_HASH}


def test_nonsense_from_a_real_server_is_never_a_pass(served_tiny, tmp_path):
    url, model = served_tiny
    judge_ = make_judge(
        "llm", url=url, model=model, max_tokens=12, malformed_retries=1, cache_dir=tmp_path
    )
    results = run(judge_, responses=RESPONSES[:2])
    for judgement in results:
        if judgement.verdicts is None:
            assert "malformed judge output after 2 request(s)" in judgement.error
            assert judgement.requests == 2
        else:  # a random model that wrote valid verdicts still needs evidence in the response
            assert all(v.status != COVERED or v.evidence for v in judgement.verdicts)
    assert all(j.covered is None or not any(j.covered) for j in results)


def test_docs_quote_the_judge_prompt_verbatim():
    from l2smerge.eval.judges.llm import JUDGE_SYSTEM

    docs = (Path(__file__).resolve().parents[1] / "docs" / "tasks.md").read_text()
    assert JUDGE_SYSTEM in docs and PROMPT_HASH in docs
    assert JUDGE_REPAIR.split("{problem}")[0] in docs
