"""Stage 5: the chat app served for real on a local port, driven through its page in headless
Chromium and through its API with gradio_client. Its models are stage 1's adapter (and the base
with the adapter off) and a served chat model on a local OpenAI-compatible server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import ROOT, EchoChat, LocalServer, run_script
from instructkit.judge.human import read_human_ratings

MAX_NEW_TOKENS = "24"




def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def chat_app(trained_run, tmp_path_factory):
    """(url, run folder): stage 2 answered 2 test records one at a time (batch 1, as the app answers),
    with a served chat model as a third column; the app serves that folder and finds all three."""
    run = tmp_path_factory.mktemp("chat")
    echo = LocalServer(EchoChat)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    stage2 = run_script("part2_generate_test_responses.py", "--test-file", str(trained_run / "data" / "test.json"),
                        "--adapter", str(trained_run / "finetuned"), "--output-dir", str(run), "--limit", "2",
                        "--batch-size", "1", "--max-new-tokens", MAX_NEW_TOKENS,
                        "--compare", "echo=openai:echo", "--compare-base-url", echo.url)
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    port, log = free_port(), run / "app.log"
    app = subprocess.Popen(
        [sys.executable, str(ROOT / "part5_chat_app.py"), "--output-dir", str(run), "--adapter",
         str(trained_run / "finetuned"), "--port", str(port), "--max-new-tokens", MAX_NEW_TOKENS],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while time.time() < deadline and app.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    assert app.poll() is None, log.read_text()[-3000:]
    yield url, run
    app.terminate()
    app.wait(timeout=30)
    echo.shutdown()


def stored(run) -> list[dict]:
    return json.loads((run / "test_base_model.json").read_text())


def test_page_streams_both_models_greedy_answers_and_saves_a_rating(chat_app):
    from instructkit.app.browser import open_page
    from instructkit.app.chat import wait_for_answers

    url, run = chat_app
    record = stored(run)[0]
    with open_page(url) as page:
        page.locator("#example input").click()
        page.get_by_role("option").first.click()
        page.wait_for_function("() => document.querySelector('#message textarea').value !== ''")
        assert page.locator("#input textarea").input_value() == record["input"]
        assert record["output"] in page.locator("#example-details").inner_text()
        page.locator("#send").click()
        wait_for_answers(page)
        answers = {name: page.locator(f"#chat-{name} .message-row.bot-row").last.inner_text().strip()
                   for name in ("base", "finetuned", "echo")}
        # Greedy, formatted and decoded as stage 2 does: its stored answers for the same record.
        assert answers["base"] == record["base_model_response"]
        assert answers["finetuned"] == record["finetuned_model_response"]
        assert answers["echo"] == record["echo_model_response"]  # stage 2's third column, found by the app
        page.get_by_label("finetuned better").check()
        page.locator("#rating-finetuned textarea").fill("80")
        page.locator("#save-rating").click()
        page.locator("#status").get_by_text("Saved to").wait_for(timeout=30_000)

    saved = read_human_ratings(run / "human_ratings.json")  # the file stage 4 --compare-with reads
    chat = [c for c in saved["chat_ratings"] if c["message"] == record["instruction"]][-1]
    assert chat["preference"] == "finetuned" and chat["ratings"] == {"finetuned": 80}
    assert chat["record_index"] == 0 and chat["answers"]["finetuned"] == record["finetuned_model_response"]
    assert {"index": 0, "model": "finetuned", "rating": 80} in [
        {k: r[k] for k in ("index", "model", "rating")} for r in saved["ratings"]]
    # The report counts the chat app's preferences beside the ratings.
    from instructkit.report.build import build_report

    assert "finetuned 1" in build_report(run).read_text().split('id="chat-preferences"')[1].split("</p>")[0]


def text_of(message: dict) -> str:
    return "".join(part["text"] for part in message["content"] if part.get("type") == "text")


def test_api_chats_in_turns_refuses_bad_ratings_and_stops_on_request(chat_app):
    from gradio_client import Client

    url, run = chat_app
    client = Client(url, verbose=False)
    greedy = (0, 1, int(MAX_NEW_TOKENS), 0)  # temperature, top-p, max new tokens, seed
    client.predict("Name a colour.", "", *greedy, api_name="/chat")
    base, _, echo, status = client.predict("Name another one.", "", *greedy, api_name="/chat")
    # A served chat model is sent the whole conversation; the alpaca-trained columns one instruction.
    assert text_of(echo[-1]) == "3 messages; last: Name another one." and status.startswith("Answered in")
    assert len(base) == 4 and text_of(base[2]) == "Name another one."
    # Regenerate's first step takes the last turn back and puts its message in the box again.
    base, _, echo, message, _ = client.predict(api_name="/undo_last")
    assert len(base) == 2 and len(echo) == 2 and message == "Name another one."
    *_, echo, status = client.predict("Name another one.", "", *greedy, api_name="/chat")
    assert text_of(echo[-1]) == "3 messages; last: Name another one."

    with pytest.raises(Exception, match="not a whole number from 0 to 100"):
        client.predict("tie", "150", "", "", api_name="/rate")
    assert "(a preference)" in client.predict("tie", "", "", "", api_name="/rate")
    chat = read_human_ratings(run / "human_ratings.json")["chat_ratings"][-1]
    assert (chat["message"], chat["preference"], chat["record_index"]) == ("Name another one.", "tie", None)

    # Stop: the answer being written ends after its current token; the models still waiting do not start.
    job = client.submit("Write a long story about a dragon and a knight, in many chapters.", "", 0, 1, 1024, 0,
                        api_name="/chat")
    while not job.outputs():
        time.sleep(0.05)
    # gradio_client cannot send a second event while one streams from the same client (its SSE reader
    # races); the Stop endpoint is not queued, so a plain POST with the session's hash reaches it.
    httpx.post(url + "gradio_api/run/stop", json={"data": [], "session_hash": client.session_hash}).raise_for_status()
    *_, echo, status = job.result(timeout=120)
    assert text_of(echo[-1]) == "(stopped)" and status.startswith("Stopped after")


def test_app_refuses_without_an_adapter_and_on_a_taken_port(tmp_path, trained_run):
    result = run_script("part5_chat_app.py", "--output-dir", str(tmp_path), timeout=120)
    assert result.returncode == 2 and "run stage 1 first" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_script("part5_chat_app.py", "--adapter", str(trained_run / "finetuned"), "--port", str(port),
                            timeout=120)
    assert result.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in result.stderr
