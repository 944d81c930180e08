"""Stage 5: the chat app served for real on a local port, driven through its page in headless
Chromium and through its API with gradio_client. Its models are stage 1's adapter on the tiny Llama
(and the base with the adapter off: the wiring, not the weights, is tested here) and a served chat
model on a local OpenAI-compatible server. Markup from a
model or a file shows as text, runs nothing and fetches nothing; requests for another host are refused."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.parse

import httpx
import pytest

from conftest import EchoChat, LocalServer, chat_app_served, run_script, run_stage
from instructkit.judge.human import read_human_ratings

MAX_NEW_TOKENS = "24"
REMOTE = "http://192.0.2.1"  # TEST-NET-1 (RFC 5737): the page must never send the browser there
# Markup in each string a model or a file gives the page: each sets window.__pwned if it ever runs,
# each image or frame would be fetched from REMOTE if it were markup.
HOSTILE = {
    "instruction": f'<img src={REMOTE}/1.png onerror="window.__pwned=1"> Name a colour.',  # the example's label too
    "input": f"<script>window.__pwned=2</script><img src={REMOTE}/2.png>",
    "output": f"![a]({REMOTE}/3.png) <iframe src={REMOTE}/3></iframe>",
    "base": f'"><svg onload=window.__pwned=4><image href={REMOTE}/4.png /></svg>',
    "finetuned": f"$$\\href{{{REMOTE}/5}}{{x}}$$ <b onmouseover=window.__pwned=5>bold</b>",
    "echo": f"<img src=x onerror=window.__pwned=6><link rel=stylesheet href={REMOTE}/6.css>",
    "rating model": f"<img src={REMOTE}/7.png onerror=window.__pwned=7>",  # in a hand-edited human_ratings.json
}


def add_hostile_record(run) -> None:
    """A test record written into stage 2's responses by hand, markup in every field the page shows
    (a model's name cannot be markup: reading the file refuses one that is not a column name)."""
    rows = stored(run) + [{"instruction": HOSTILE["instruction"], "input": HOSTILE["input"], "output": HOSTILE["output"],
                           **{f"{name}_model_response": HOSTILE[name] for name in ("base", "finetuned", "echo")}}]
    (run / "test_base_model.json").write_text(json.dumps(rows, indent=2))


@pytest.fixture(scope="module")
def chat_app(tiny_trained_run, tmp_path_factory):
    """(url, run folder): stage 2 answered 2 test records one at a time (batch 1, as the app answers),
    with a served chat model as a third column; a third record is added by hand (add_hostile_record).
    The app serves that folder and finds all three models."""
    run = tmp_path_factory.mktemp("chat")
    echo = LocalServer(EchoChat)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    stage2 = run_stage("part2_generate_test_responses.py", "--test-file", str(tiny_trained_run / "data" / "test.json"),
                       "--adapter", str(tiny_trained_run / "finetuned"), "--output-dir", str(run), "--limit", "2",
                       "--batch-size", "1", "--max-new-tokens", MAX_NEW_TOKENS,
                       "--compare", "echo=openai:echo", "--compare-base-url", echo.url)
    assert stage2.returncode == 0, stage2.stderr[-3000:]
    add_hostile_record(run)
    with chat_app_served(run / "app.log", "--output-dir", str(run), "--adapter", str(tiny_trained_run / "finetuned"),
                         "--max-new-tokens", MAX_NEW_TOKENS) as url:
        yield url, run
    echo.shutdown()


def stored(run) -> list[dict]:
    return json.loads((run / "test_base_model.json").read_text())


def test_page_streams_both_models_greedy_answers_and_saves_a_rating(chat_app):
    from instructkit.app.browser import open_page
    from instructkit.app.chat import wait_for_answers, wait_for_status

    url, run = chat_app
    record = stored(run)[0]
    with open_page(url) as page:
        page.locator("#example input").click()
        page.get_by_role("option").first.click()
        page.wait_for_function("() => document.querySelector('#message textarea').value !== ''")
        assert page.locator("#input textarea").input_value() == record["input"]
        assert record["output"] in page.locator("#example-details textarea").input_value()
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
        wait_for_status(page, "Saved to", 30)

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


def test_app_refuses_without_an_adapter_and_on_a_taken_port(tmp_path, tiny_trained_run):
    result = run_script("part5_chat_app.py", "--output-dir", str(tmp_path), timeout=120)
    assert result.returncode == 2 and "run stage 1 first" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_script("part5_chat_app.py", "--adapter", str(tiny_trained_run / "finetuned"), "--port", str(port),
                            timeout=120)
    assert result.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in result.stderr


# What the chat page holds that came from outside: a remote address in a URL attribute, an on*
# handler, an element that embeds another document.
SCAN = """() => ({
    pwned: typeof window.__pwned,
    remote: Array.from(document.querySelectorAll('*')).flatMap(element => element.getAttributeNames()
        .filter(name => /^(src|srcset|srcdoc|href|xlink:href|data|poster|action)$/.test(name)
                        && element.getAttribute(name).includes('192.0.2.1'))
        .map(name => element.tagName + ' ' + name)),
    handlers: Array.from(document.querySelectorAll('*')).flatMap(
        element => element.getAttributeNames().filter(name => name.startsWith('on'))),
    embedded: document.querySelectorAll('iframe, object, embed').length,
})"""


def test_markup_from_models_and_files_shows_as_text_runs_nothing_and_fetches_nothing(chat_app):
    from instructkit.app.browser import open_page
    from instructkit.app.chat import wait_for_answers

    url, run = chat_app
    ratings = run / "human_ratings.json"
    kept = ratings.read_text() if ratings.is_file() else None
    requests: list[str] = []
    with open_page(url) as page:
        page.on("request", lambda request: requests.append(request.url))
        page.reload()  # watched from its first request
        page.locator("#example input").click()
        page.get_by_role("option", name=f"2: {HOSTILE['instruction']}", exact=True).click()
        page.wait_for_function("() => document.querySelector('#message textarea').value !== ''")
        assert page.locator("#message textarea").input_value() == HOSTILE["instruction"]
        assert page.locator("#input textarea").input_value() == HOSTILE["input"]
        details = page.locator("#example-details textarea").input_value()
        for field in ("output", "base", "finetuned", "echo"):
            assert HOSTILE[field] in details, field
        page.locator("#send").click()
        wait_for_answers(page)
        for name in ("base", "finetuned", "echo"):
            asked = page.locator(f"#chat-{name} .message-row.user-row").last.inner_text()
            assert HOSTILE["instruction"] in asked and HOSTILE["input"] in asked, name
        # The served model's reply repeats the message: model-written markup.
        reply = page.locator("#chat-echo .message-row.bot-row").last.inner_text()
        assert HOSTILE["instruction"] in reply and HOSTILE["input"] in reply
        # A rating over a hand-edited human_ratings.json is refused with an error that quotes the file.
        ratings.write_text(json.dumps({"input": None, "input_sha256": None,
                                       "ratings": [{"index": 0, "model": HOSTILE["rating model"], "rating": 50}]}))
        try:
            page.get_by_label("tie", exact=True).check()
            page.locator("#save-rating").click()
            page.locator(".toast-body").last.wait_for(timeout=30_000)
            # (a long value is quoted shortened: its start is enough)
            assert "field 'model' is '<img src=" in page.locator(".toast-body").last.inner_text()
        finally:
            ratings.unlink()
            if kept is not None:
                ratings.write_text(kept)
        seen = page.evaluate(SCAN)
    assert seen == {"pwned": "undefined", "remote": [], "handlers": [], "embedded": 0}
    assert requests and [r for r in requests if not r.startswith((url, "data:", "blob:"))] == []


def test_a_request_for_another_host_is_refused(chat_app):
    """DNS rebinding: a web page whose domain is pointed at 127.0.0.1 sends that domain as the Host."""
    url, _ = chat_app
    port = urllib.parse.urlsplit(url).port

    def status(host: str, method: str = "GET", path: str = "/") -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request(method, path, body=b"{}" if method == "POST" else None,
                               headers={"Host": host, "Content-Type": "application/json"})
            return connection.getresponse().status
        finally:
            connection.close()

    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
        assert [status(host), status(host, "GET", "/config"), status(host, "POST", "/gradio_api/run/stop")] == [400] * 3
    assert [status(f"127.0.0.1:{port}"), status(f"localhost:{port}"), status(f"[::1]:{port}")] == [200] * 3


@pytest.mark.fast
def test_the_host_check_and_the_servers_a_run_folder_may_name():
    from instructkit.app.chat import host_check, stored_compare_models

    assert host_check("0.0.0.0") == [] and host_check("192.168.1.5") == []  # let in by --host: no check
    [check] = host_check("127.0.0.2")
    assert check.kwargs["allowed_hosts"] == ["localhost", "127.0.0.1", "[::1]", "127.0.0.2"]
    # Stage 2's .meta.json is data: a served model is asked again on this machine or OpenAI's API only.
    meta = {"compare": {"local": "openai:a", "api": "openai:b", "far": "openai:c", "hub": "smollm2-135m-instruct"},
            "inputs": {"compare_local": {"base_url": "http://localhost:8000/v1"},
                       "compare_api": {"base_url": "https://api.openai.com/v1"},
                       "compare_far": {"base_url": "http://127.0.0.1@evil.example/v1"}}}
    assert [(model.name, server) for model, server in stored_compare_models(meta)] == [
        ("local", "http://localhost:8000/v1"), ("api", ""), ("hub", "")]
