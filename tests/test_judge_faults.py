"""Stage 4 against a judge server that fails: a real HTTP server on 127.0.0.1 speaking the OpenAI chat
API, which answers each response according to the fault written in it (429 with Retry-After, 500,
a stalled connection, malformed JSON, empty content, a refusal, an out-of-range score, ...).
Also: a run killed while judging resumes to the same file, and a second run on the folder stops."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from http.server import ThreadingHTTPServer

import pytest

from conftest import PROJECT_DATA, ROOT, JSONHandler, run_script, run_stage

SECRET = "sk-instructkit-fault-test-9c4e1a77d2b05f3e"
RETRY_MARK = "could not be read"  # in the stricter prompt stage 4 sends after an unreadable reply


class FaultyJudgeServer(ThreadingHTTPServer):
    """Answers `POST /v1/chat/completions`; the response being judged names the fault."""

    daemon_threads = True

    def __init__(self, key: str = SECRET, delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), FaultyJudgeHandler)
        self.key, self.delay = key, delay
        self.up = False  # when set, the "down" fault is over and such a response scores 55
        self.attempts: dict[str, list[float]] = defaultdict(list)  # prompt hash -> request times
        self.requests = 0  # every request, refused ones too
        self.prompts: list[str] = []  # every prompt received
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def attempts_for(self, fault: str, retry: bool = False) -> list[list[float]]:
        return [times for key, times in self.attempts.items() if key.startswith(f"{fault}|{int(retry)}|")]


@contextmanager
def unhurried(judge: FaultyJudgeServer):
    """The judge without its delay while the block runs: the delay is there to kill a run at a
    chosen point, and a rerun or a reference run is raced by nothing."""
    delay, judge.delay = judge.delay, 0.0
    try:
        yield
    finally:
        judge.delay = delay


class FaultyJudgeHandler(JSONHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests += 1
        if self.headers.get("Authorization") != f"Bearer {self.server.key}":
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            return self.reply(401, {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error"}})
        prompt = body["messages"][-1]["content"]
        with self.server.lock:
            self.server.prompts.append(prompt)
        if "### Response A:" in prompt and "STEADY" in prompt:  # a steady pairwise judge: the answer marked PREFER wins
            first, second = prompt.split("### Response B:")
            content = "A" if "PREFER" in first.split("### Response A:")[1] else "B" if "PREFER" in second else "tie"
            return self.reply(200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                                 "finish_reason": "stop"}]})
        fault = re.search(r"FAULT:(\w+)", prompt).group(1)
        retry = RETRY_MARK in prompt
        key = f"{fault}|{int(retry)}|{hashlib.sha256(prompt.encode()).hexdigest()}"
        with self.server.lock:
            self.server.attempts[key].append(time.monotonic())
            attempt = len(self.server.attempts[key])
        time.sleep(self.server.delay)
        if fault == "rate" and attempt == 1:
            return self.reply(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "1"})
        if fault == "flaky" and attempt <= 2:
            return self.reply(500, {"error": {"message": "internal error"}})
        if fault == "down" and not self.server.up:
            return self.reply(503, {"error": {"message": "overloaded"}})
        if fault == "stall" and attempt == 1:
            time.sleep(5)  # longer than the client's --request-timeout
        if fault == "malformed":
            return self.reply(200, b'{"id": "x", "choices": [{"message": ')
        content = {"down": "Score: 55", "rate": "85", "flaky": "Score: 70", "stall": "**60**", "empty": "", "range": "Score: 150",
                   "prose": "75" if retry else "The response is mostly right."}.get(fault)
        if fault == "echo":  # a server that repeats the request's headers back
            content = f"Score: 50\nrequest authorized by {self.headers['Authorization']}"
        if fault.startswith("ok"):
            content = fault[2:] or "80"
        message = {"role": "assistant", "content": content}
        if fault == "refusal":
            message = {"role": "assistant", "content": None, "refusal": "I can't help with grading."}
        self.reply(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


@pytest.fixture
def server(local_servers):
    return lambda **kwargs: local_servers(FaultyJudgeServer, **kwargs)


def responses_file(path, faults: list[str]):
    """Real instructions from our dataset; each base response names a fault, finetuned is fine."""
    records = json.loads(PROJECT_DATA.read_text())[:len(faults)]
    path.write_text(json.dumps([{**r, "base_model_response": f"FAULT:{fault}", "finetuned_model_response": "FAULT:ok90"}
                                for r, fault in zip(records, faults)]))
    return path


def stage4_args(responses, output_dir, url, *extra):
    return ["--input", str(responses), "--output-dir", str(output_dir), "--judge", "openai:judge",
            "--judge-base-url", url, *extra]


def env_with_key(key: str = SECRET) -> dict:
    return {**os.environ, "OPENAI_API_KEY": key}


FAULTS = {  # fault -> the score stage 4 must end with (None: stored as null, with why)
    "ok": 80, "echo": 50, "rate": 85, "flaky": 70, "stall": 60, "prose": 75,
    "malformed": None, "empty": None, "refusal": None, "range": None, "down": None,
}


def test_failing_judge_is_retried_within_bounds_and_nothing_is_dropped(server, tmp_path):
    judge = server()
    responses = responses_file(tmp_path / "responses.json", list(FAULTS))
    result = run_stage("part4_local_evaluation.py", *stage4_args(
        responses, tmp_path / "out", judge.url, "--max-retries", "2", "--request-timeout", "1.5", "--concurrency", "4"),
        env=env_with_key())
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "out" / "judge_scores.json").read_text())
    entries = {fault: row["scores"]["base"] for fault, row in zip(FAULTS, scores["records"])}
    assert {fault: e["score"] for fault, e in entries.items()} == FAULTS
    assert all(row["scores"]["finetuned"]["score"] == 90 for row in scores["records"])
    summary = scores["summary"]["base"]
    assert (summary["n_scored"], summary["n_total"]) == (6, 11)
    assert summary["mean"] == pytest.approx((80 + 50 + 85 + 70 + 60 + 75) / 6)
    assert "base: mean 70.0" in result.stdout and "scored 6/11" in result.stdout
    assert entries["echo"]["reply"] == "Score: 50\nrequest authorized by Bearer [OPENAI_API_KEY]"

    # Each null says why, with the raw reply where there was one.
    assert entries["range"]["reply"] == "Score: 150" and entries["range"]["parse"] == "unparsed: 150 is outside 0-100"
    assert entries["empty"]["parse"] == "unparsed: empty reply" and entries["empty"]["retried"]
    assert entries["refusal"]["error"] == "refusal: I can't help with grading."
    assert "503" in entries["down"]["error"] or "overloaded" in entries["down"]["error"]
    assert entries["malformed"]["parse"] == "error"
    assert entries["prose"]["first_reply"] == "The response is mostly right." and entries["prose"]["retried"]

    # Retries: bounded, with the server's Retry-After honoured, and only where they can help.
    [rate] = judge.attempts_for("rate")
    assert len(rate) == 2 and rate[1] - rate[0] >= 0.9
    assert [len(t) for t in judge.attempts_for("flaky")] == [3]
    assert [len(t) for t in judge.attempts_for("down")] == [3]  # 1 + --max-retries 2, then given up
    assert [len(t) for t in judge.attempts_for("stall")] == [2]
    assert judge.attempts_for("down", retry=True) == []  # a server error is not re-asked with a stricter prompt
    assert [len(t) for t in judge.attempts_for("range", retry=True)] == [1]

    everything = result.stdout + result.stderr + "".join(
        p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert SECRET not in everything


def test_requests_that_got_no_answer_are_asked_again_and_never_pass_for_results(server, tmp_path):
    judge = server()
    responses = tmp_path / "responses.json"
    records = json.loads(PROJECT_DATA.read_text())[:3]
    responses.write_text(json.dumps([{**r, "base_model_response": "FAULT:down", "finetuned_model_response": "FAULT:down"}
                                     for r in records]))
    args = stage4_args(responses, tmp_path / "out", judge.url, "--max-retries", "0")
    down = run_stage("part4_local_evaluation.py", *args, env=env_with_key())
    assert down.returncode == 2 and "every request of this run failed: 6 requests got no answer" in down.stderr
    assert "Traceback" not in down.stderr
    written = json.loads((tmp_path / "out" / "judge_scores.json").read_text())  # what there is, with why
    assert all(row["scores"]["base"]["failed"] for row in written["records"])

    judge.up = True
    up = run_stage("part4_local_evaluation.py", *args, env=env_with_key())
    assert up.returncode == 0, up.stderr[-3000:]
    assert "6 requests got no answer when judge_scores.json was made: judging again" in up.stdout
    scores = json.loads((tmp_path / "out" / "judge_scores.json").read_text())
    assert [row["scores"][m]["score"] for row in scores["records"] for m in ("base", "finetuned")] == [55] * 6
    assert "already finished" in run_stage("part4_local_evaluation.py", *args, env=env_with_key()).stdout

    # Some failed, some answered: exit 0 with a warning, and the rerun asks only the failed ones.
    judge.up = False
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([{**r, "base_model_response": "FAULT:down", "finetuned_model_response": "FAULT:ok90"}
                                 for r in records]))
    args = stage4_args(mixed, tmp_path / "mixed", judge.url, "--max-retries", "0")
    partial = run_stage("part4_local_evaluation.py", *args, env=env_with_key())
    assert partial.returncode == 0 and "warning: 3 requests got no answer" in partial.stdout
    judge.up, before = True, judge.requests
    run_stage("part4_local_evaluation.py", *args, env=env_with_key())
    assert judge.requests - before == 3
    scores = json.loads((tmp_path / "mixed" / "judge_scores.json").read_text())
    assert [row["scores"]["base"]["score"] for row in scores["records"]] == [55] * 3


@pytest.mark.parametrize("concurrency", [1, 3])
def test_rejected_key_stops_at_once_names_the_server_and_is_not_echoed(server, tmp_path, concurrency):
    judge = server(key="the-right-key", delay=0.3)
    responses = responses_file(tmp_path / "responses.json", ["ok"] * 6)
    # A process of its own: in this one, the server's threads share the interpreter with the client's,
    # and a refusal can come back before the last of `concurrency` requests has gone out.
    result = run_script("part4_local_evaluation.py", *stage4_args(responses, tmp_path / "out", judge.url,
                                                                   "--concurrency", str(concurrency)), env=env_with_key())
    assert result.returncode == 2
    # Only the requests already in flight when the first refusal came back: none is sent after it.
    assert judge.requests == concurrency
    assert f"the judge server at {judge.url} refused" in result.stderr
    assert SECRET not in result.stdout + result.stderr  # the server echoed it; we redact it
    assert "[OPENAI_API_KEY]" in result.stderr
    assert not (tmp_path / "out" / "judge_scores.json").exists()


def test_killed_judging_resumes_to_the_same_file_and_a_second_run_is_refused(server, tmp_path):
    judge = server(delay=0.3)
    responses = responses_file(tmp_path / "responses.json", [f"ok{7 * i % 101}" for i in range(12)])
    args = ["--concurrency", "1"]  # 4 requests per logged chunk
    command = [sys.executable, str(ROOT / "part4_local_evaluation.py"), *stage4_args(responses, tmp_path / "a", judge.url, *args)]
    first = subprocess.Popen(command, cwd=ROOT, env=env_with_key(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "a" / ".judge_scores.json.progress.jsonl"
    deadline = time.time() + 120
    while (not progress.exists() or len(progress.read_text().splitlines()) < 3) and time.time() < deadline:
        time.sleep(0.1)
    second = run_stage("part4_local_evaluation.py", *stage4_args(responses, tmp_path / "a", judge.url, *args),
                       env=env_with_key())
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert second.returncode == 2 and "another judge run is using" in second.stderr
    assert not (tmp_path / "a" / "judge_scores.json").exists(), "killed too late to test resuming"
    finished_before_kill = progress.read_text().count("\n") - 1  # whole lines after the settings line
    requests_before = sum(len(t) for t in judge.attempts.values())
    judge.delay = 0.0  # nothing is raced from here on

    rerun = run_stage("part4_local_evaluation.py", *stage4_args(responses, tmp_path / "a", judge.url, *args),
                      env=env_with_key())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    requests_rerun = sum(len(t) for t in judge.attempts.values()) - requests_before
    assert requests_rerun == 24 - finished_before_kill  # what was finished is not asked again
    assert not progress.exists()

    whole = run_stage("part4_local_evaluation.py", *stage4_args(responses, tmp_path / "b", judge.url, *args),
                      env=env_with_key())
    assert whole.returncode == 0
    resumed = json.loads((tmp_path / "a" / "judge_scores.json").read_text())
    uninterrupted = json.loads((tmp_path / "b" / "judge_scores.json").read_text())
    assert resumed == uninterrupted
    assert [r["scores"]["base"]["score"] for r in resumed["records"]] == [7 * i % 101 for i in range(12)]


# --- kill points, a full disk, an unwritable folder ----------------------------------------------

KILL_RECORDS = 12  # 24 scores and 24 pairwise verdicts, logged 4 at a time


@pytest.fixture(scope="module")
def steady_judge():
    judge = FaultyJudgeServer(delay=0.1)
    threading.Thread(target=judge.serve_forever, daemon=True).start()
    yield judge
    judge.shutdown()


@pytest.fixture(scope="module")
def kill_case(steady_judge, tmp_path_factory):
    """The responses, the command's arguments, and the uninterrupted run's judge_scores.json."""
    folder = tmp_path_factory.mktemp("kill")
    faults = [f"ok{11 * i % 101}" for i in range(KILL_RECORDS)]
    records = json.loads(PROJECT_DATA.read_text())[:KILL_RECORDS]
    responses = folder / "responses.json"
    responses.write_text(json.dumps([{**r, "base_model_response": f"FAULT:{f}", "finetuned_model_response": f"FAULT:ok{100 - i}"}
                                     for i, (r, f) in enumerate(zip(records, faults))]))
    args = ["--pairwise", "--concurrency", "1"]
    with unhurried(steady_judge):
        result = run_stage("part4_local_evaluation.py", *stage4_args(responses, folder / "whole", steady_judge.url, *args),
                           env=env_with_key())
    assert result.returncode == 0, result.stderr[-3000:]
    return responses, args, json.loads((folder / "whole" / "judge_scores.json").read_text())


def test_killed_overwrite_run_resumes_and_a_plain_rerun_keeps_both(steady_judge, kill_case, tmp_path):
    """--overwrite declines the finished file but never the partial work of the run it started: killed
    and rerun with --overwrite it resumes; a plain rerun in between keeps the finished file and the log."""
    responses, args, whole = kill_case
    output = tmp_path / "out"
    output.mkdir()
    for name in ("judge_scores.json", "judge_scores.meta.json"):
        shutil.copy(responses.parent / "whole" / name, output / name)
    command = [sys.executable, str(ROOT / "part4_local_evaluation.py"),
               *stage4_args(responses, output, steady_judge.url, *args, "--overwrite")]
    run = subprocess.Popen(command, cwd=ROOT, env=env_with_key(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = output / ".judge_scores.json.progress.jsonl"
    deadline = time.time() + 120
    while not (progress.exists() and progress.read_text().count("\n") - 1 >= 12) and time.time() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    logged = progress.read_text().count("\n") - 1
    assert 12 <= logged < 48, "killed too late"
    assert json.loads((output / "judge_scores.json").read_text()) == whole, "the finished file stays until replaced"

    plain = run_stage("part4_local_evaluation.py", *stage4_args(responses, output, steady_judge.url, *args), env=env_with_key())
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "stage 4 judging already finished" in plain.stdout and "holds a partial --overwrite run" in plain.stdout
    assert progress.read_text().count("\n") - 1 == logged

    with unhurried(steady_judge):
        rerun = run_stage("part4_local_evaluation.py", *stage4_args(responses, output, steady_judge.url, *args,
                                                                     "--overwrite"), env=env_with_key())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stdout
    assert json.loads((output / "judge_scores.meta.json").read_text())["items_judged_this_run"] == 48 - logged
    assert json.loads((output / "judge_scores.json").read_text()) == whole
    assert not progress.exists()


def test_new_pairwise_or_limit_reuses_every_judgement_already_paid_for(steady_judge, kill_case, tmp_path):
    responses, args, whole = kill_case
    output = tmp_path / "out"
    shutil.copytree(responses.parent / "whole", output)
    requests_before = steady_judge.requests
    fewer = run_stage("part4_local_evaluation.py", *stage4_args(responses, output, steady_judge.url, "--concurrency", "1",
                                                                 "--limit", "5"), env=env_with_key())
    assert fewer.returncode == 0, fewer.stderr[-3000:]
    assert "settings changed since judge_scores.json was made (pairwise: 'finetuned:base' -> ''; limit: 0 -> 5)" in fewer.stdout
    assert "reusing 10 judgements" in fewer.stdout
    assert steady_judge.requests == requests_before
    scores = json.loads((output / "judge_scores.json").read_text())
    assert [r["scores"] for r in scores["records"]] == [r["scores"] for r in whole["records"][:5]]


@pytest.mark.parametrize("finished", [0, 4, 12, 20, 24, 44])  # nothing, 1, 3 and 5 chunks, scores done, mid pairwise
def test_killed_at_any_point_the_rerun_equals_an_uninterrupted_run(steady_judge, kill_case, tmp_path, finished):
    responses, args, whole = kill_case
    output = tmp_path / "out"
    command = [sys.executable, str(ROOT / "part4_local_evaluation.py"), *stage4_args(responses, output, steady_judge.url, *args)]
    run = subprocess.Popen(command, cwd=ROOT, env=env_with_key(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = output / ".judge_scores.json.progress.jsonl"
    deadline = time.time() + 120
    while not (progress.exists() and progress.read_text().count("\n") - 1 >= finished) and time.time() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (output / "judge_scores.json").exists(), "killed too late"
    logged = progress.read_text().count("\n") - 1

    with unhurried(steady_judge):
        rerun = run_stage("part4_local_evaluation.py", *stage4_args(responses, output, steady_judge.url, *args),
                          env=env_with_key())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((output / "judge_scores.json").read_text()) == whole
    meta = json.loads((output / "judge_scores.meta.json").read_text())
    assert meta["items_judged_this_run"] == 2 * 2 * KILL_RECORDS - logged  # nothing logged is asked again


def test_full_disk_at_the_final_write_keeps_the_judged_work(steady_judge, kill_case, tmp_path):
    responses, args, whole = kill_case
    output = tmp_path / "out"
    # room for task_metrics.json (about 10.4 kB) and the progress log (about 5 kB), not for
    # judge_scores.json (about 13 kB)
    limit = 11_500
    full = subprocess.run(
        [sys.executable, str(ROOT / "part4_local_evaluation.py"), *stage4_args(responses, output, steady_judge.url, *args)],
        cwd=ROOT, env=env_with_key(), capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_FSIZE, (limit, limit)))
    assert full.returncode == 2, full.stderr[-3000:]
    assert f"error: cannot write {output / 'judge_scores.json'}: File too large" in full.stderr
    assert not (output / "judge_scores.json").exists()
    assert not list(output.glob(".judge_scores.json.*.tmp")), "no half-written file is left"
    assert (output / ".judge_scores.json.progress.jsonl").stat().st_size < limit

    rerun = run_stage("part4_local_evaluation.py", *stage4_args(responses, output, steady_judge.url, *args), env=env_with_key())
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((output / "judge_scores.meta.json").read_text())["items_judged_this_run"] == 0
    assert json.loads((output / "judge_scores.json").read_text()) == whole


def test_output_folder_that_cannot_be_created_is_a_clear_error(steady_judge, kill_case, tmp_path):
    responses, args, _ = kill_case
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_stage("part4_local_evaluation.py", *stage4_args(responses, blocker / "out", steady_judge.url),
                       env=env_with_key())
    assert result.returncode == 2
    assert f"error: --output-dir {blocker / 'out'}: {blocker} is a file, not a folder" in result.stderr


def test_pairwise_any_columns_and_against_the_expected_output(server, tmp_path):
    """--pairwise A:B on any response columns and on `output` (AlpacaEval's reference setup): both
    orders asked, the reference pair judged without the reference shown, each pair summarized."""
    judge = server()
    records = json.loads(PROJECT_DATA.read_text())[:4]
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([{**r, "base_model_response": f"FAULT:ok{40 + i} STEADY",
                                      "finetuned_model_response": f"FAULT:ok{70 + i} STEADY PREFER"} for i, r in enumerate(records)]))
    result = run_stage("part4_local_evaluation.py", *stage4_args(
        responses, tmp_path / "out", judge.url, "--pairwise", "finetuned:base,finetuned:output,base:output"), env=env_with_key())
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "out" / "judge_scores.json").read_text())
    assert set(scores["pairwise"]) == {"finetuned:base", "finetuned:output", "base:output"}
    for row in scores["records"]:
        assert set(row["pairwise"]["finetuned:output"]) == {"outcome", "consistent", "finetuned_first", "output_first"}
        assert row["pairwise"]["finetuned:output"]["outcome"] == "win"
        assert row["pairwise"]["base:output"]["outcome"] == "tie" and row["pairwise"]["base:output"]["consistent"]
    assert scores["pairwise"]["finetuned:base"]["win_rate"] == 1.0 and scores["pairwise"]["finetuned:base"]["wins"] == 4
    assert scores["pairwise"]["base:output"]["win_rate"] == 0.5
    assert scores["pairwise"]["finetuned:output"]["mean_response_words"]["output"] > 0
    pair_prompts = [p for p in judge.prompts if "### Response A:" in p]
    assert len(pair_prompts) == 3 * 2 * 4  # three pairs, both orders, four records
    with_reference = [p for p in pair_prompts if "### Expected output:" in p]
    assert len(with_reference) == 2 * 4 and all("FAULT:ok4" in p for p in with_reference)  # only finetuned:base
    assert "pairwise finetuned vs output: finetuned wins 4" in result.stdout
    bad = run_stage("part4_local_evaluation.py", *stage4_args(responses, tmp_path / "bad", judge.url, "--pairwise", "finetuned:gpt4"),
                    env=env_with_key())
    assert bad.returncode == 2 and "--pairwise 'finetuned:gpt4': write A:B with two different columns of base, finetuned, output" in bad.stderr
