"""Stage 0: the filters on real text, the reply readers, bad seed files, the OpenAI path against a
real local server (resumed after SIGKILL to the same file), and the embedded model offline."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from rouge_score import rouge_scorer

from conftest import PROJECT_DATA, ROOT, JSONHandler, run_stage
from instructkit.data.similarity import RougeLFilter, contaminated, near_duplicates
from instructkit.data.synthesis import DEFAULT_SEEDS, SynthesisConfig, instruction_problem, load_seed_tasks
from instructkit.data.synthesis_prompts import read_instance, read_new_tasks, read_reflection

SECRET = "sk-instructkit-generator-test-5b1f0c9e7a"
RECORDS = json.loads(PROJECT_DATA.read_text())
SEEDS = [json.loads(line) for line in open(DEFAULT_SEEDS)]


# --- filters and readers, on real text -------------------------------------------------------------

@pytest.mark.fast
def test_fast_rouge_filter_decides_exactly_as_all_pairs_rouge_score():
    texts = [r["instruction"] for r in RECORDS[:400]] + [s["instruction"] for s in SEEDS]
    fast = RougeLFilter(0.7)
    decisions = fast.add(texts[:150]) + fast.add(texts[150:])  # two rounds, as in generation
    scorer, kept, expected = rouge_scorer.RougeScorer(["rougeL"]), [], []  # every pair through rouge-score
    for text in texts:
        scores = [scorer.score(k, text)["rougeL"].fmeasure for k in kept]
        best = scores.index(max(scores)) if scores else -1
        expected.append((best, round(scores[best], 4)) if scores and scores[best] > 0.7 else None)
        kept += [text] if expected[-1] is None else []
    assert decisions == expected
    assert fast.texts == kept
    assert 0 < sum(d is not None for d in decisions) < len(texts)  # the data has both kinds


@pytest.mark.fast
def test_rouge_filter_drops_a_reworded_instruction_and_keeps_a_new_one():
    novelty = RougeLFilter(0.7)
    novelty.add(["Give a word that means the opposite of the given word."])
    reworded, new = "Give a word that means the opposite of the word given.", "Explain how a rainbow forms after rain."
    assert novelty.add([reworded, new]) == [(0, pytest.approx(0.9091, abs=1e-4)), None]
    assert RougeLFilter(0.95).add(["Give a word that means the opposite of the given word.", reworded])[1] is None


@pytest.mark.fast
@pytest.mark.parametrize("text, problem", [
    ("Summarize it.", "instruction too short"),
    (" ".join(["word"] * 151), "instruction too long"),
    ("Draw a picture of a lighthouse at night.", "needs what a text model cannot do (blocklist)"),
    ("Describe the plot shown in the attached image.", "needs what a text model cannot do (blocklist)"),
    ("¿Cuál es la capital de Francia y por qué?", "starts with a non-ASCII character"),
    ("- List three fruits that are red.", "starts with punctuation"),
    ("Explain why leaves change colour in autumn.", None),
    ("Suggest a name for a profile of a company.", None),  # "file" inside "profile" is not the word
])
def test_instruction_rules(text, problem):
    assert instruction_problem(text, SynthesisConfig()) == problem


@pytest.mark.fast
def test_near_duplicates_and_contamination_on_real_records():
    texts = [f"{r['instruction']}\n{r['input']}".strip() for r in RECORDS[:200]]
    reworded = texts[6].replace("following passage", "passage below")  # the summary of the recycling passage
    dropped = near_duplicates(texts + [reworded], 0.9)
    assert dropped[len(texts)][0] == 6 and dropped[len(texts)][1] >= 0.9
    assert len(texts) not in near_duplicates(texts + [reworded], 0.99)
    # Character n-grams see templated tasks with other numbers as near duplicates (one template, one lesson).
    assert texts[44] == "Convert 12 hours to minutes." and dropped[44] == (22, pytest.approx(0.937, abs=1e-3))
    evaluation = texts[:20]
    found = contaminated(texts[100:140] + [texts[3], reworded], evaluation, 0.8)
    assert found[40] == (3, pytest.approx(1.0)) and found[41][0] == 6


@pytest.mark.fast
def test_reply_readers_take_only_whole_answers():
    assert read_new_tasks(" Name a fruit that is yellow.\nTask 10: Write a haiku about snow.\n11. Translate 'cat' into German.",
                          truncated=False) == ["Name a fruit that is yellow.", "Write a haiku about snow.",
                                               "Translate 'cat' into German."]
    assert read_new_tasks("Name a fruit that is yellow.\nTask 10: Write a haiku ab", truncated=True) == ["Name a fruit that is yellow."]
    assert read_instance(" The cat sat.\nOutput: Le chat était assis.", False) == ("The cat sat.", "Le chat était assis.")
    assert read_instance("<none>\nOutput: Paris", False) == ("", "Paris")
    assert read_instance(" Positive\nInput: I love it.", True) == ("I love it.", "Positive")
    assert read_instance("The answer is Paris.", False) is None
    assert read_instance("x\nOutput: dark\n\nOutput: light", False) is None
    whole = "[Instruction]\nName two red fruits.\n[Input]\n\n[Response]\nStrawberry and cherry.\n[End]"
    assert read_reflection(whole, ("instruction", "input", "output")) == {
        "instruction": "Name two red fruits.", "input": "", "output": "Strawberry and cherry."}
    assert read_reflection(whole.replace("[End]", ""), ("instruction", "input", "output")) is None
    assert read_reflection("[Response]\n\n[End]", ("output",)) is None


# --- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("lines, expected", [
    ([{"instruction": "Name a colour.", "is_classification": False}],
     "record 0: field 'instances' must be a non-empty list"),
    ([{"instruction": "Name a colour.", "instances": [{"input": ""}], "is_classification": False}],
     "record 0: missing field 'output'"),
    ([SEEDS[0], {"instruction": "Name a colour.", "instances": [{"input": "", "output": "red"}], "is_classification": "no"}],
     "record 1: field 'is_classification' must be true or false"),
    ([SEEDS[0], {"instruction": "", "instances": [{"input": "", "output": "red"}]}], "record 1: field 'instruction' is empty"),
])
def test_bad_seed_file_names_file_record_and_field_and_writes_nothing(tmp_path, lines, expected):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_stage("part0_generate_instruction_data.py", "--seeds", str(seeds), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{seeds}: {expected}" in result.stderr
    assert not (tmp_path / "out").exists()


def test_seeds_in_alpaca_format_and_every_flag_problem_at_once(tmp_path):
    assert [s.instruction for s in load_seed_tasks(str(PROJECT_DATA))][:3] == [r["instruction"] for r in RECORDS[:3]]
    result = run_stage("part0_generate_instruction_data.py", "--method", "reflect", "--num-instructions", "0",
                       "--rouge-threshold", "1.5", "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "--method reflect needs --data FILE" in result.stderr and "--rouge-threshold must be at most 1 (got 1.5)" in result.stderr
    result = run_stage("part0_generate_instruction_data.py", "--method", "magpie", "--generator", "openai:gpt-4o-mini")
    assert result.returncode == 2 and "use an hf: generator" in result.stderr


@pytest.mark.fast
def test_preference_pair_methods_refuse_what_they_cannot_use(tmp_path):
    out = tmp_path / "out"
    result = run_stage("part0_generate_instruction_data.py", "--method", "pairs-sample", "--temperature", "0",
                       "--samples", "1", "--exclude", "test.json", "--output-dir", str(out))
    assert result.returncode == 2
    assert "--temperature above 0" in result.stderr and "--samples must be at least 2" in result.stderr, result.stderr
    assert "--exclude is for the instruction-data methods" in result.stderr
    result = run_stage("part0_generate_instruction_data.py", "--method", "pairs-rewrite", "--output-dir", str(out))
    assert result.returncode == 2 and f"{out / 'data' / 'train.json'}: no such file; run stage 1 first" in result.stderr
    conversations = tmp_path / "chats.json"
    conversations.write_text(json.dumps([{"messages": [{"role": "user", "content": "Hi"},
                                                       {"role": "assistant", "content": "Hello."}]}]))
    result = run_stage("part0_generate_instruction_data.py", "--method", "pairs-rewrite", "--data", str(conversations),
                       "--output-dir", str(out))
    assert result.returncode == 2 and f"{conversations}: record 0 is a conversation" in result.stderr
    result = run_stage("part0_generate_instruction_data.py", "--method", "pairs-sample", "--data", str(PROJECT_DATA),
                       "--max-requests", "3", "--output-dir", str(out))
    assert result.returncode == 2 and "--max-requests 3 is too few for one record" in result.stderr
    result = run_stage("part0_generate_instruction_data.py", "--method", "pairs-sample", "--data", str(PROJECT_DATA),
                       "--output-dir", str(out))
    assert result.returncode == 2 and f"{out / 'finetuned'}: no adapter_config.json; run stage 1 first, or pass --policy" in result.stderr
    result = run_stage("part0_generate_instruction_data.py", "--method", "pairs-rewrite", "--data", str(PROJECT_DATA),
                       "--max-records", "5", "--direction", "worse", "--dry-run", "--output-dir", str(out))
    assert result.returncode == 0 and "rewrite the response to be impolite" in result.stdout, result.stderr
    assert "== requests: 5 (5 records)" in result.stdout and not out.exists()


# --- the OpenAI path, against a real server on 127.0.0.1 -------------------------------------------

POOL = RECORDS[:300]  # what the scripted server proposes as new tasks: real instructions
BY_INSTRUCTION = {r["instruction"]: r for r in POOL}
EXTRA = ["Draw a diagram of the water cycle.", "Hi there", "Describe the image below in detail."]  # filtered


class GeneratorServer(ThreadingHTTPServer):
    """Answers stage 0's prompts like a careful model would, deterministically (temperature 0):
    new tasks drawn from our dataset by the prompt's hash, Yes/No, instances from the same records."""

    daemon_threads = True

    def __init__(self, delay: float = 0.0):
        super().__init__(("127.0.0.1", 0), GeneratorHandler)
        self.delay, self.requests, self.lock = delay, 0, threading.Lock()
        self.down_after: int | None = None  # answer 503 to every request after this many

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def scripted_reply(prompt: str) -> str:
    digest = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    if "Continue the list with new tasks" in prompt:
        picks = [POOL[(digest >> (8 * k)) % len(POOL)]["instruction"] for k in range(4)] + [EXTRA[digest % len(EXTRA)]]
        return picks[0] + "".join(f"\nTask {10 + k}: {text}" for k, text in enumerate(picks[1:]))
    task = re.findall(r"Task: (.*)", prompt)[-1]
    if "Answer Yes or No" in prompt:
        return "Yes" if re.search(r"\b(classify|positive or negative|true or false)\b", task, re.I) else "No"
    record = BY_INSTRUCTION.get(task, {"input": "", "output": "An answer."})
    if "Label:" in prompt.splitlines()[-1]:
        return f"Label: {record['output']}\nInput: {record['input'] or 'x'}"
    return f"Input: {record['input'] or '<none>'}\nOutput: {record['output']}"


class GeneratorHandler(JSONHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests += 1
        if self.headers.get("Authorization") != f"Bearer {SECRET}":
            return self.reply(401, {"error": {"message": "Incorrect API key provided"}})
        time.sleep(self.server.delay)
        if self.server.down_after is not None and self.server.requests > self.server.down_after:
            return self.reply(503, {"error": {"message": "overloaded"}})
        content = scripted_reply(body["messages"][-1]["content"])
        self.reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]})


@pytest.fixture
def generator_server(local_servers):
    return lambda **kwargs: local_servers(GeneratorServer, **kwargs)


def openai_args(url: str, out, *extra: str) -> list[str]:
    return ["--generator", "openai:scripted", "--base-url", url, "--output-dir", str(out), "--num-instructions", "24",
            "--batch-size", "4", "--seed", "3", "--keep-dropped", *extra]


ENV = {**os.environ, "OPENAI_API_KEY": SECRET}


def test_self_instruct_through_an_openai_server_then_killed_run_resumes_to_the_same_file(generator_server, tmp_path):
    server = generator_server()
    whole = tmp_path / "whole"
    result = run_stage("part0_generate_instruction_data.py", *openai_args(server.url, whole), env=ENV)
    assert result.returncode == 0, result.stderr
    data_path = whole / "generated" / "instruction-data.json"
    data = json.loads(data_path.read_text())
    meta = json.loads((whole / "generated" / "instruction-data.meta.json").read_text())
    dropped = json.loads((whole / "generated" / "instruction-data.dropped.json").read_text())
    assert 20 <= len(data) <= 24 and set(data[0]) == {"instruction", "input", "output"}
    for record in data:  # the server's instances are the dataset's own: the pairing held
        assert record["output"] == BY_INSTRUCTION[record["instruction"]]["output"]
    counts = meta["counts"]
    assert counts["requests"] == server.requests and meta["generator"]["kind"] == "openai"
    assert counts["dropped"]["needs what a text model cannot do (blocklist)"] >= 1
    assert counts["dropped"]["too similar to a kept instruction (ROUGE-L)"] >= 1
    assert counts["kept"] + sum(1 for d in dropped if "duplicate" in d["reason"] or "contamination" in d["reason"]) \
        == counts["records_before_curation"]
    assert {d["reason"] for d in dropped} >= {"instruction too short", "too similar to a kept instruction (ROUGE-L)"}
    classified = [r for r in data if re.search(r"\bclassify\b", r["instruction"], re.I)]
    assert all(r["output"] == BY_INSTRUCTION[r["instruction"]]["output"] for r in classified)
    assert SECRET not in result.stdout + result.stderr + data_path.read_text() + json.dumps(meta)
    # Stage 1 reads it as it is.
    from instructkit.data.records import load_records
    assert load_records(str(data_path)) == data

    # The same run, SIGKILLed once some rounds are logged, then rerun: the same file, and the rerun
    # asks only what the first part did not.
    slow = generator_server(delay=0.05)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(ROOT / "part0_generate_instruction_data.py"),
                                *openai_args(slow.url, killed)], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while slow.requests < 14 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    asked_before = slow.requests
    assert (killed / "generated" / ".instruction-data.json.progress.jsonl").is_file()
    assert not (killed / "generated" / "instruction-data.json").exists()
    result = run_stage("part0_generate_instruction_data.py", *openai_args(slow.url, killed), env=ENV)
    assert result.returncode == 0, result.stderr
    assert "resuming from" in result.stdout
    assert (killed / "generated" / "instruction-data.json").read_text() == data_path.read_text()
    assert slow.requests - asked_before < counts["requests"]

    # Another seed is other work: refused, not mixed into the log of a killed run.
    log = killed / "generated" / ".instruction-data.json.progress.jsonl"
    process = subprocess.Popen([sys.executable, str(ROOT / "part0_generate_instruction_data.py"),
                                *openai_args(slow.url, killed, "--overwrite")], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while (not log.is_file() or log.read_text().count("\n") < 2) and process.poll() is None:
        time.sleep(0.02)  # a logged round: a log with none would block nothing
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run_stage("part0_generate_instruction_data.py", *openai_args(slow.url, killed, "--overwrite", "--seed", "4"), env=ENV)
    assert result.returncode == 2 and "seed: 3 -> 4" in result.stderr


def test_a_round_without_answers_stops_the_run_and_the_rerun_continues_to_the_same_file(generator_server, tmp_path):
    server = generator_server()
    whole = run_stage("part0_generate_instruction_data.py", *openai_args(server.url, tmp_path / "whole"), env=ENV)
    assert whole.returncode == 0, whole.stderr
    server.down_after = server.requests + 10  # the next run: some rounds, then the server is down
    args = openai_args(server.url, tmp_path / "flaky", "--max-retries", "0")
    down = run_stage("part0_generate_instruction_data.py", *args, env=ENV)
    assert down.returncode == 2 and "got no answer (InternalServerError" in down.stderr, down.stderr[-2000:]
    assert "rerun the same command to continue" in down.stderr and "Traceback" not in down.stderr
    assert not (tmp_path / "flaky" / "generated" / "instruction-data.json").exists()
    server.down_after = None
    again = run_stage("part0_generate_instruction_data.py", *args, env=ENV)
    assert again.returncode == 0 and "resuming from" in again.stdout, again.stderr[-2000:]
    generated = "generated/instruction-data.json"
    assert (tmp_path / "flaky" / generated).read_text() == (tmp_path / "whole" / generated).read_text()


def test_refused_key_stops_at_once_and_leaves_nothing(generator_server, tmp_path):
    server = generator_server()
    result = run_stage("part0_generate_instruction_data.py", *openai_args(server.url, tmp_path / "out"),
                       env={**os.environ, "OPENAI_API_KEY": "sk-wrong-key-0123456789"})
    assert result.returncode == 2
    assert f"the generator server at {server.url} refused" in result.stderr
    assert "sk-wrong-key-0123456789" not in result.stderr
    assert server.requests <= 4  # the first round only: nothing more was sent after the refusal
    assert not list((tmp_path / "out").glob("generated/*"))


def test_curate_and_dry_run_send_nothing(generator_server, tmp_path):
    data = tmp_path / "data.json"
    test = tmp_path / "test.json"
    records = RECORDS[:30]
    near = {**records[2], "instruction": records[2]["instruction"] + " "}
    data.write_text(json.dumps(records + [records[4], near]))
    test.write_text(json.dumps(records[10:12]))
    out = tmp_path / "out"
    result = run_stage("part0_generate_instruction_data.py", "--method", "curate", "--data", str(data),
                       "--exclude", str(test), "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    kept = json.loads((out / "generated" / "instruction-data.json").read_text())
    meta = json.loads((out / "generated" / "instruction-data.meta.json").read_text())
    assert kept == records[:10] + records[12:]
    assert meta["counts"]["dropped"] == {"exact duplicate": 2, "too similar to an evaluation record (contamination)": 2}
    flag = run_stage("part0_generate_instruction_data.py", "--method", "curate", "--data", str(data), "--exclude",
                     str(test), "--contamination", "flag", "--output-dir", str(tmp_path / "flag"))
    flagged = json.loads((tmp_path / "flag" / "generated" / "instruction-data.meta.json").read_text())["contamination_flagged"]
    assert flag.returncode == 0 and [f["index"] for f in flagged] == [10, 11]

    server = generator_server()
    result = run_stage("part0_generate_instruction_data.py", *openai_args(server.url, tmp_path / "dry", "--dry-run"), env=ENV)
    assert result.returncode == 0 and "Task 9:" in result.stdout and "at most 1000 in all" in result.stdout
    assert server.requests == 0 and not (tmp_path / "dry").exists()


# --- the embedded model, offline -------------------------------------------------------------------

def test_embedded_generator_offline_self_instruct_magpie_and_reflect(tmp_path):
    out = tmp_path / "out"
    small = ["--output-dir", str(out), "--batch-size", "4", "--max-new-tokens", "80", "--overwrite"]
    result = run_stage("part0_generate_instruction_data.py", "--num-instructions", "2", *small)
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "generated" / "instruction-data.meta.json").read_text())
    assert meta["generator"]["model"] == "smollm2-135m-instruct" and meta["method"] == "self-instruct"
    assert meta["counts"]["requests"] >= 4 + 2 * 2 and meta["temperature"] == 0.7
    assert "train on it: python part1_instruction_finetuning.py --data" in result.stdout

    result = run_stage("part0_generate_instruction_data.py", "--method", "magpie", "--num-instructions", "1", *small)
    assert result.returncode == 0, result.stderr
    magpie = json.loads((out / "generated" / "instruction-data.meta.json").read_text())
    assert magpie["method"] == "magpie" and magpie["counts"]["requests"] >= 4 + 1
    data = json.loads((out / "generated" / "instruction-data.json").read_text())
    assert all(r["input"] == "" and r["instruction"] and r["output"] for r in data)

    source = tmp_path / "two.json"
    source.write_text(json.dumps(RECORDS[:2]))
    result = run_stage("part0_generate_instruction_data.py", "--method", "reflect", "--reflect", "response",
                       "--data", str(source), *small)
    assert result.returncode == 0, result.stderr
    reflected = json.loads((out / "generated" / "instruction-data.json").read_text())
    outcomes = json.loads((out / "generated" / "instruction-data.meta.json").read_text())["counts"]["outcomes"]
    assert sum(n for what, n in outcomes.items() if what.startswith("response ")) == 2
    # Whatever the small model wrote, each record is either rewritten whole or kept as it was.
    assert [r["instruction"] for r in reflected] == [r["instruction"] for r in RECORDS[:2]]
