"""The report page with markup in every string a user or a model controls: a run folder written by
hand (no models), where each instruction, response, model name, category, judge reply, task name and
chat-app preference is a distinct script-injection payload. The page must show each one as text and
run none of them, in Python's parser and in headless Chromium; its script must survive a malformed
#filter= link, and a `$` in a name (matplotlib's formula syntax) must not stop the plots. The page's
Content-Security-Policy lets its own stylesheet and script run and nothing else, and nothing in it
sends the browser anywhere."""

from __future__ import annotations

import json
import shutil
import urllib.parse
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from instructkit.evaluate.metrics import resolve_metrics
from instructkit.evaluate.task_metrics import task_metrics
from instructkit.judge.mt_bench import summarize_mt
from instructkit.judge.scoring import JudgeConfig, summarize
from instructkit.report.build import build_report

# One payload per place the page shows a string from an artifact; each sets window.__pwned to its own
# number if it ever runs. Shown as text: every one must be in the page's visible text.
TEXT_PAYLOADS = {
    "instruction": '<img src=x onerror="window.__pwned=1">',
    "input": "<script>window.__pwned=2</script>",
    "output": "</script><script>window.__pwned=3</script>",
    "base": '"><svg onload=window.__pwned=4>',
    "finetuned": "'><img src=x onerror=window.__pwned=5>",
    "compare response": '<iframe srcdoc="<script>parent.__pwned=6</script>"></iframe>',
    # A compare model's column name; the `$...$` is a malformed matplotlib formula.
    "compare model": r'x"><img src=x onerror=window.__pwned=7>$\nope$',
    "category": r"<svg><script>window.__pwned=8</script></svg>$\bad{$",
    "judge model": '</p><img src=x onerror="window.__pwned=9">',
    "mt category": "<script>window.__pwned=10</script>",
    "task": '"><img src=x onerror=window.__pwned=11>',
    "subtask": "<svg onload=window.__pwned=12>",
    "metric": "<script>window.__pwned=13</script>metric",
    "base model": '<img src=x onerror="window.__pwned=14">',
    "chat preference": "</script><svg onload=window.__pwned=15>",
    "pair outcome": "<img src=x onerror=window.__pwned=16>",
    "mt judge model": "<script>window.__pwned=19</script>",
    # A file name: the report names an input that changed since a stage ran.
    "changed input": '<img src=x onerror="window.__pwned=20">.json',
}
# Shown in an attribute only: the judge's raw reply is the score cell's tooltip.
JUDGE_REPLY = '" onmouseover="window.__pwned=17" x="<script>window.__pwned=18</script>'
COMPARE = TEXT_PAYLOADS["compare model"]


def write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder with every artifact the report reads, written without a model: the summaries
    come from the project's own summarizers, over hand-written responses and judgements."""
    out = tmp_path_factory.mktemp("report_page")
    p = TEXT_PAYLOADS
    write(out / "finetuned" / "training_summary.json", {
        "base_model": p["base model"], "prompt_style": "alpaca", "hyperparameters": {"lr": 0.0005},
        "n_records": {"train": 8, "val": 1, "test": 3}, "steps": 4, "val_loss_before": 2.5, "val_loss_after": 2.0,
        "tokens_per_second": 100.0, "wall_time_s": 3.0, "device": "cpu"})

    models = ["base", "finetuned", COMPARE]
    rows = [
        {"instruction": p["instruction"], "input": p["input"], "output": p["output"], "category": p["category"],
         "base_model_response": p["base"], "finetuned_model_response": p["finetuned"],
         f"{COMPARE}_model_response": p["compare response"]},
        {"instruction": "What is the capital of France?", "input": "", "output": "Paris.", "category": p["category"],
         "base_model_response": "Paris.", "finetuned_model_response": "Lyon.", f"{COMPARE}_model_response": "Paris!"},
        {"instruction": "Name a colour.", "input": "", "output": "Blue.", "category": "open_qa",
         "base_model_response": "Red.", "finetuned_model_response": "Blue.", f"{COMPARE}_model_response": None},
    ]
    write(out / "test_base_model.json", rows)
    (out / p["changed input"]).write_text("changed since stage 2 read it\n")
    write(out / "test_base_model.meta.json", {"inputs": {"test": {"path": str(out / p["changed input"]), "sha256": "0" * 64}}})
    records = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"],
                **{m: r[f"{m}_model_response"] for m in models}} for r in rows]
    write(out / "task_metrics.json", task_metrics(records, models, 0, resolve_metrics([], out), "test records"))

    done = {}
    for m in models:
        for i, r in enumerate(records):
            if r[m] is not None:
                done[("score", m, i)] = {"value": 20.0 * (i + 1) + len(m) % 7, "parse": "number",
                                         "reply": JUDGE_REPLY if (m, i) == ("base", 0) else "50"}
    pairs = [("finetuned", "base"), ("finetuned", COMPARE)]
    for a, b in pairs:
        for i, r in enumerate(records):
            if r[a] is not None and r[b] is not None:
                for first, verdict in ((a, "A"), (b, "B" if i % 2 else "A")):
                    done[("pair", f"{a}:{b}", f"{first}_first", i)] = {"value": verdict, "parse": "verdict", "reply": "A"}
    scores = summarize(records, models, pairs, done, JudgeConfig(output_dir=str(out), seed=0, scoring="generate"),
                       {"kind": "openai", "model": p["judge model"]}, None)
    scores["records"][0]["pairwise"]["finetuned:base"]["outcome"] = p["pair outcome"]
    write(out / "judge_scores.json", scores)

    mt_rows = [{"question_id": 81 + i, "category": category, "turns": ["Write a poem.", "Shorter."],
                **{f"{m}_model_response": [f"{m} one {i}", f"{m} two {i}"] for m in models}}
               for i, category in enumerate(["writing", p["mt category"], p["mt category"]])]
    mt_done = {("score", m, i, t): {"value": 3 + (i + t + len(m)) % 7, "parse": "rating", "reply": "[[5]]"}
               for m in models for i in range(3) for t in range(2)}
    mt_done |= {("pair", f"finetuned:{COMPARE}", f"{first}_first", i, t): {"value": "A", "parse": "verdict", "reply": "[[A]]"}
                for first in ("finetuned", COMPARE) for i in range(3) for t in range(2)}
    write(out / "mt_bench_scores.json", summarize_mt(mt_rows, models, [("finetuned", COMPARE)], mt_done, 0,
                                                     {"kind": "openai", "model": p["mt judge model"], "seed": 0}))

    result = {"kind": "task", "metric": p["metric"], "value": 0.25, "stderr": 0.1, "n_questions": 4}
    write(out / "benchmark_results.json", {"smoke_run": True, "models": {
        m: {p["task"]: {**result, "subtasks": {p["subtask"]: result}}} for m in ("base", "finetuned")},
        "finetuned_minus_base": {p["task"]: {"metric": p["metric"], "difference": 0.0, "mcnemar": None}}})

    write(out / "human_ratings.json", {
        "input": None, "input_sha256": None,
        "ratings": [{"index": i, "model": m, "rating": 40 + 10 * i} for i in range(3) for m in ("base", "finetuned")],
        "chat_ratings": [{"message": "Hi", "input": "", "record_index": None, "answers": {}, "ratings": {},
                          "preference": preference} for preference in (p["chat preference"], "finetuned")]})
    build_report(out)
    return out


def test_every_payload_is_text_in_the_markup(run):
    """Python's parser: the markup the page is made of holds no element and no handler from a payload."""
    page = BeautifulSoup((run / "report.html").read_text(), "html.parser")
    assert len(page.find_all("script")) == 1 and not page.script.get("src")  # the report's own
    assert not page.find_all(["svg", "iframe"])
    images = page.find_all("img")
    assert len(images) == 3  # judge histogram, category changes, MT-Bench categories: all plotted despite the `$`
    assert all(img["src"].startswith("data:image/png;base64,") for img in images)
    assert not [(tag.name, name) for tag in page.find_all(True) for name in tag.attrs if name.startswith("on")]
    text = page.get_text()
    for where, payload in TEXT_PAYLOADS.items():
        assert payload in text, where
    assert page.find(id="records").tbody.tr.find_all("td")[4]["title"] == JUDGE_REPLY
    for element_id in (f"judge-{COMPARE}", f"metrics-{COMPARE}", f"mt-{COMPARE}", f"pair-finetuned:{COMPARE}",
                       f"mt-pair-finetuned:{COMPARE}", f"category-{TEXT_PAYLOADS['category']}",
                       f"mt-category-{TEXT_PAYLOADS['mt category']}"):
        assert page.find(id=element_id), element_id


CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian's chromium "
                                    "package: `make chromium`); the page is not opened in a browser")


def browse(url: str, act):
    """Open `url` in headless Chromium, call act(page), and return what it returns and what went
    wrong: the page's errors, its console's (a Content-Security-Policy refusal is one) and each
    request that is not for the file itself or a data: URI (the report is one self-contained page)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors = []

            def console(message):
                if message.type == "error":
                    errors.append(message.text)

            def request(sent):
                if not sent.url.startswith(("file:", "data:")):
                    errors.append(f"request to {sent.url}")

            def failed(sent):
                if sent.failure == "csp":  # stopped by the page's policy before it left: never sent
                    errors.remove(f"request to {sent.url}")

            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("console", console)
            page.on("request", request)
            page.on("requestfailed", failed)
            page.goto(url)
            page.wait_for_timeout(300)  # a failed image's onerror, had one been let in, has fired by now
            return act(page), errors
        finally:
            browser.close()


SCAN = """() => ({
    pwned: typeof window.__pwned,
    scripts: document.scripts.length,
    foreign: document.querySelectorAll('svg, iframe, object, embed').length,
    images: Array.from(document.images, img => img.getAttribute('src').slice(0, 22)),
    handlers: Array.from(document.querySelectorAll('*')).flatMap(
        element => element.getAttributeNames().filter(name => name.startsWith('on'))),
    text: document.body.innerText,
    title: document.querySelector('#records tbody tr').cells[4].title,
})"""


@needs_chromium
def test_no_payload_runs_in_chromium_and_each_shows_as_text(run):
    seen, errors = browse((run / "report.html").as_uri(), lambda page: page.evaluate(SCAN))
    assert errors == []
    assert seen["pwned"] == "undefined"
    assert seen["scripts"] == 1 and seen["foreign"] == 0 and seen["handlers"] == []
    assert seen["images"] == ["data:image/png;base64,"] * 3
    for where, payload in TEXT_PAYLOADS.items():
        assert payload in seen["text"], where
    assert seen["title"] == JUDGE_REPLY


# What would run or load if escaping ever let markup through, put into a copy of the page by hand.
INJECTED = ('<img src="http://192.0.2.1/x.png" onerror="window.__pwned=21"><script>window.__pwned=22</script>'
            '<link rel="stylesheet" href="http://192.0.2.1/x.css"><style>body { color: rgb(255, 0, 0); }</style>')


@needs_chromium
def test_the_page_policy_runs_only_the_reports_own_script_and_style(run, tmp_path):
    copy = tmp_path / "report.html"
    copy.write_text((run / "report.html").read_text().replace("<body>", "<body>" + INJECTED, 1))

    def act(page):
        page.locator("#filter").fill("capital")  # the report's script still filters
        return page.evaluate("""() => [typeof window.__pwned, getComputedStyle(document.body).color,
                                       getComputedStyle(document.body).maxWidth, document.getElementById('shown').textContent]""")

    (pwned, color, width, shown), errors = browse(copy.as_uri(), act)
    assert pwned == "undefined" and color != "rgb(255, 0, 0)"
    assert width == "1300px" and shown == "1"  # report.css and report.js, let in by their hashes
    # Refused by the policy, each one: the script, the handler, the image, the stylesheet, the style.
    assert len(errors) >= 4 and all("Content Security Policy" in error for error in errors), errors


def index_order(page) -> list[int]:
    return [int(text) for text in page.locator("#records tbody tr td:first-child").all_text_contents()]


@needs_chromium
def test_a_malformed_filter_link_filters_by_its_text_and_the_table_still_sorts(run):
    def act(page):
        value, shown = page.locator("#filter").input_value(), page.locator("#shown").text_content()
        header = page.locator("#records thead th").first  # "#": sorts by record index
        header.click()
        ascending = index_order(page)
        header.click()
        return value, shown, ascending, index_order(page)

    (value, shown, ascending, descending), errors = browse((run / "report.html").as_uri() + "#filter=%E0%A4%A", act)
    assert errors == []  # decodeURIComponent throws on it; the page falls back to the text as written
    assert (value, shown) == ("%E0%A4%A", "0")
    assert ascending == [0, 1, 2] and descending == [2, 1, 0]


@needs_chromium
def test_a_filter_link_with_markup_in_it_filters_to_the_record(run):
    needle = TEXT_PAYLOADS["instruction"]
    url = (run / "report.html").as_uri() + "#filter=" + urllib.parse.quote(needle, safe="")

    def act(page):
        return page.locator("#filter").input_value(), page.locator("#shown").text_content(), page.evaluate(
            "() => Array.from(document.querySelectorAll('#records tbody tr'), row => row.hidden)")

    (value, shown, hidden), errors = browse(url, act)
    assert errors == [] and value == needle and shown == "1" and hidden == [False, True, True]


def test_an_inlined_asset_that_would_end_its_element_is_refused():
    """The page inlines report.js and report.css; one holding `</script>` (in a string, say) would
    end the script there and turn the rest into markup, so the build refuses it."""
    from jinja2 import DictLoader, TemplateError

    from instructkit.report.build import _ENV

    page = '<script>{% filter inline("script") %}{% include "a.js" %}{% endfilter %}</script>'
    safe = _ENV.overlay(loader=DictLoader({"page": page, "a.js": 'if (a < b && c) f("<b>");'}))
    assert safe.get_template("page").render() == '<script>if (a < b && c) f("<b>");</script>'  # included verbatim
    for asset in ('const end = "</SCRIPT>";', "<!-- a comment -->"):
        unsafe = _ENV.overlay(loader=DictLoader({"page": page, "a.js": asset}))
        with pytest.raises(TemplateError, match="could end its <script> early"):
            unsafe.get_template("page").render()
