"""Stage 5: a local web app (Gradio) where one message goes to the base model and its finetune, and
to any model stage 2 compared them with, and the answers stream in side by side, each formatted as
stage 2 formats it. Test records can be picked as examples, with their expected output, stored
responses and judge scores; ratings go to `human_ratings.json`, where stage 4 reads them.

What a model writes and what a file holds is shown as text, never as markup, and the page answers
only requests addressed to this machine (see docs/security.md)."""

from __future__ import annotations

import html
import ipaddress
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import gradio as gr
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from instructkit.app.config import NO_ANSWER, NOT_ANSWERED, STOPPED, ChatConfig
from instructkit.data.conversations import earlier_turns
from instructkit.data.parity import check_parity
from instructkit.data.prompts import PromptStyle, get_style, load_style
from instructkit.data.records import Record, split_file, validate_records
from instructkit.data.responses import PREFERENCE_MODEL, RESPONSES_FILE, read_responses
from instructkit.errors import UserError
from instructkit.generate.compare import CompareModel, load_compare, parse_compare, with_preference_model
from instructkit.generate.generator import TransformersGenerator
from instructkit.judge.config import HUMAN_FILE, SCORES_FILE
from instructkit.judge.human import save_chat_rating
from instructkit.models.finetune import RunModels
from instructkit.models.precision import resolve_precision
from instructkit.models.references import trained_prompts
from instructkit.runs.artifacts import read_json

TIE = "tie"
OPENAI_URL = "https://api.openai.com/v1"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")  # as a Host header names them


@dataclass
class Column:
    """One model on the page: how it renders a prompt and streams an answer."""

    name: str
    generator: object  # a TransformersGenerator, or stage 2's OpenAIGenerator for openai: models
    role: str  # which of the generator's models answers: base (adapter off) or finetuned
    style: PromptStyle
    max_prompt_tokens: int  # --max-prompt-tokens

    def prompt(self, history: list[dict[str, str]], record: Record):
        # Earlier turns only where the format has a place for them: the page is a conversation for
        # chat-template styles and one instruction per message for Alpaca and Phi-3.
        return self.generator.render(self.style, record, history if self.style.multi_turn else [])

    def stream(self, prompt, settings: dict, stop: threading.Event) -> Iterator[str]:
        limit = self.generator.prompt_limit(self.max_prompt_tokens, settings["max_new_tokens"])
        length = self.generator.lengths([prompt])[0] if limit is not None else 0
        if limit is not None and length > limit:  # as stage 2: not cut, not asked
            yield (f"{NOT_ANSWERED}the conversation is {length} tokens, over the limit of {limit}: "
                   "--max-prompt-tokens, or the model's context less the answer's tokens; clear the chat to start again)")
        elif hasattr(self.generator, "stream"):
            yield from self.generator.stream(self.role, prompt, settings["max_new_tokens"], self.style,
                                             temperature=settings["temperature"], top_p=settings["top_p"],
                                             seed=settings["seed"], stop=stop)
        else:  # a served model answers whole
            texts, _ = self.generator.generate(self.role, [prompt], settings["max_new_tokens"], self.style)
            # None or a FailedRequest when no answer came back
            yield texts[0] if isinstance(texts[0], str) and texts[0] else NO_ANSWER


class ChatSession:
    """Everything the page needs, loaded once: the models, the examples and what stages 2 and 4
    stored about them. One answer is generated at a time (the page's queue sees to that)."""

    def __init__(self, config: ChatConfig):
        self.output_dir = Path(config.output_dir)
        self.run = run = RunModels.of(config, self.output_dir, "finetuned")
        adapter, base = run.adapter, run.base
        self.style = load_style(adapter)
        self.responses = self.output_dir / RESPONSES_FILE
        self.examples, self.stored_models = self._examples(config)
        self.scores = self._scores()
        print(f"loading {base.reference} and its finetune ({'merged' if config.merged else adapter})", flush=True)
        dtype = resolve_precision(config.precision, "inference").dtype
        generator = TransformersGenerator(base, None if config.merged else adapter, config.merged,
                                          config.trust_remote_code, ["base", "finetuned"], dtype, run.quantization)
        self.columns = [Column(name, generator, name, self.style, config.max_prompt_tokens) for name in ("base", "finetuned")]
        self.parity = None if config.merged else self._check_parity(generator, adapter)
        for model, base_url in self._compare_models(config):
            print(f"loading compare model {model.name} ({model.reference})", flush=True)
            try:
                its_generator, role, its_style = load_compare(
                    model, self.style, TransformersGenerator, base_url=base_url, concurrency=1,
                    max_retries=config.max_retries, timeout=config.request_timeout, trust_remote_code=config.trust_remote_code, dtype=dtype)
            except UserError as exc:
                if config.compare:  # asked for: a reason to stop
                    raise
                print(f"warning: leaving out stage 2's compare model {model.name}: {exc}", flush=True)
                continue
            self.columns.append(Column(model.name, its_generator, role, its_style, config.max_prompt_tokens))
        self.stops: defaultdict[str, threading.Event] = defaultdict(threading.Event)  # per browser session

    def _check_parity(self, generator: TransformersGenerator, adapter: Path) -> dict:
        """Stage 1's saved prompts built as this page builds them: each record's last message after
        its earlier turns (the page sends those only in the chat styles, so the others are checked on
        single-turn records), see data/parity.py."""
        saved = trained_prompts(adapter)
        if saved and not self.style.multi_turn:  # the page sends one instruction at a time
            saved = saved | {"records": [e for e in saved["records"] if not earlier_turns(e["record"])]}
            if not saved["records"]:
                return {"checked": False, "reason": "no single-turn record among the prompts stage 1 saved"}
        column = self.columns[1]

        def page_prompt(record: Record) -> list[int]:
            message, extra = self.page_message(record)
            sent = column.prompt(earlier_turns(record), {"instruction": message, "input": extra})
            return self.style.encode(sent, generator.tokenizer)

        result = check_parity(saved, {"chat app": page_prompt}, generator.stop_ids(self.style), generator.tokenizer)
        if result["checked"]:
            print(f"template parity: the page builds the prompts the adapter was trained on "
                  f"({result['records']} records), and stops on {result['end_of_answer']!r}", flush=True)
        return result

    def _examples(self, config: ChatConfig) -> tuple[list[dict], list[str]]:
        if self.responses.is_file():
            return read_responses(self.responses)
        test_file = split_file(self.output_dir, "test", config.test_file)
        return (validate_records(read_json(test_file), str(test_file)) if test_file.is_file() else []), []

    def _scores(self) -> dict[int, dict]:
        """Stage 4's scores of each example, by record index."""
        path = self.output_dir / SCORES_FILE
        rows = read_json(path).get("records", []) if path.is_file() and self.stored_models else []
        return {row["index"]: row.get("scores", {}) for row in rows}

    def _compare_models(self, config: ChatConfig) -> list[tuple[CompareModel, str]]:
        """The --compare models with --compare-base-url, else stage 2's, each with the server it used."""
        if config.compare:
            found = [(model, config.compare_base_url) for model in parse_compare(config.compare)]
        else:
            meta = self.responses.with_suffix(".meta.json")
            found = stored_compare_models(read_json(meta)) if meta.is_file() else []
        return [(model, "") for model in with_preference_model([], self.run.preference(self.output_dir))] + found

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    def page_message(self, record: Record) -> tuple[str, str]:
        """What picking a test record puts in the message and input boxes: in the chat styles, whose
        page has no input box, the user turn as the template is sent it."""
        return (user_text(record), "") if self.style.multi_turn else (record["instruction"], record["input"])

    def example_index(self, message: str, extra: str, picked: int | None) -> int | None:
        """The test record this message is, if it is one picked from the examples and left unedited."""
        if picked is None or picked >= len(self.examples):
            return None
        return picked if self.page_message(self.examples[picked]) == (message.strip(), extra.strip()) else None

    def stored_answer(self, model: str, index: int | None) -> str | None:
        return self.examples[index].get(model) if index is not None and model in self.stored_models else None

    def describe_example(self, index: int) -> str:
        """A test record's expected output, stored responses and judge scores, as plain text."""
        record = self.examples[index]
        lines = [f"Expected output (test record {index}):\n{record['output']}"]
        for model in self.stored_models:
            score = self.scores.get(index, {}).get(model, {}).get("score")
            judged = f" (judge score {score})" if score is not None else ""
            lines.append(f"Stored {model} response (stage 2){judged}:\n{record.get(model) or '(none)'}")
        return "\n\n".join(lines)

    def answer(self, histories: dict[str, list], record: Record, settings: dict, session: str) -> Iterator[dict[str, str]]:
        """Each column's answer to `record` after its own history, one column after the other, as
        {column: text so far}; the page's Stop button ends it after the current token."""
        stop = self.stops[session]
        stop.clear()
        answers: dict[str, str] = {}
        for column in self.columns:
            if stop.is_set():
                answers[column.name] = STOPPED
                continue
            prompt = column.prompt(histories.get(column.name, []), record)
            for text in column.stream(prompt, settings, stop):
                answers[column.name] = text
                yield answers
        yield answers

    def stopped(self, session: str) -> bool:
        return self.stops[session].is_set()

    def stop(self, session: str) -> None:
        self.stops[session].set()

    def rate(self, last: dict, preference: str | None, ratings: dict[str, str]) -> str:
        """Save a rating of the last exchange; returns what the page says about it."""
        if not last:
            raise UserError("send a message first: a rating is of the answers on the page")
        given = {m: r.strip() for m, r in ratings.items() if r and r.strip()}
        if bad := [m for m, r in given.items() if not (r.isdigit() and 0 <= int(r) <= 100)]:
            raise UserError(f"the rating of {', '.join(bad)} is not a whole number from 0 to 100")
        given = {m: int(r) for m, r in given.items()}
        if preference is None and not given:
            raise UserError("choose which answer is better, or give a 0-100 rating")
        entry = {**last, "preference": preference, "ratings": given, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        index = last["record_index"]
        # Only a rating of exactly what stage 2 stored is a rating of that stored response.
        indexed = {m: r for m, r in given.items()
                   if (stored := self.stored_answer(m, index)) is not None and stored == last["answers"].get(m)}
        notes = save_chat_rating(self.output_dir, self.responses, entry, indexed)
        where = self.output_dir / HUMAN_FILE
        if indexed and not notes:
            return f"Saved to {where}, with the stored responses of test record {index} (stage 4 reads them)."
        reason = notes[0] if notes else (
            "not a test record's stored answer, so kept with the chat only" if given else "a preference")
        return f"Saved to {where} ({reason})."


def stored_compare_models(meta: dict) -> list[tuple[CompareModel, str]]:
    """Stage 2's compare models, from its .meta.json, each with the server it asked. The file is data,
    not the user's word: a served model is asked again only on OpenAI's API or on this machine, so a
    run folder from elsewhere cannot send the chat (and OPENAI_API_KEY) to a server it names."""
    found = []
    stored = meta.get("compare", {})  # stage 1b's model is taken from the run folder itself
    for model in parse_compare([f"{name}={ref}" for name, ref in stored.items() if name != PREFERENCE_MODEL]):
        server = meta.get("inputs", {}).get(f"compare_{model.name}", {}).get("base_url", "")
        server = "" if server == OPENAI_URL else server
        if server and not is_loopback(urlsplit(server).hostname or ""):
            print(f"warning: leaving out stage 2's compare model {model.name}: its server {server} is not this "
                  f"machine (--compare {model.name}=... --compare-base-url {server} asks it)", flush=True)
            continue
        found.append((model, server))
    return found


def is_loopback(host: str) -> bool:
    """Whether a host name or address (IPv6 with or without brackets) is this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_check(host: str) -> list[Middleware]:
    """Served on a loopback address: refuse (400) a request whose Host header names anything but this
    machine. A web page whose domain an attacker points at 127.0.0.1 (DNS rebinding) sends its own
    domain as the Host; Gradio checks only the Origin of cross-origin requests, which such a page's
    same-origin requests pass. Served on another address (--host), the network was let in: no check."""
    if not is_loopback(host):
        return []
    named = f"[{host}]" if ":" in host else host
    return [Middleware(TrustedHostMiddleware, allowed_hosts=list(dict.fromkeys([*LOOPBACK_NAMES, named])),
                       www_redirect=False)]


def as_text(text: str) -> str:
    """Text as the page must show it. Gradio puts a chat message and an error message into the page as
    HTML (render_markdown=False only skips the Markdown step), so what a model wrote or a file holds is
    escaped, and `<img src=...>` shows as those characters instead of fetching the image."""
    return html.escape(text, quote=False)


def settings_of(temperature: float, top_p: float, max_new_tokens: float, seed: float) -> dict:
    return {"temperature": float(temperature), "top_p": float(top_p), "max_new_tokens": int(max_new_tokens), "seed": int(seed)}


def user_text(record: Record) -> str:
    """The user's turn as a chat model is sent it (and as the page shows it)."""
    return get_style("chat").prompt(record)[-1]["content"]


def build_app(session: ChatSession, max_new_tokens: int, max_queue: int):
    """The page: a column per model, the message box, settings, examples and the rating row."""
    names = session.names
    one_instruction = not session.style.multi_turn
    mode = ("Each message is one instruction (with an optional input): the "
            f"**{session.style.name}** format was trained on single instructions, so earlier turns are not sent."
            if one_instruction else "A conversation: every earlier turn is sent, through the chat template.")
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # no web fonts: offline
    with gr.Blocks(title="instructkit chat") as app:
        gr.Markdown(f"## Base and finetune, side by side\n{mode} Answers are greedy unless the temperature is above 0; "
                    f"the models answer one after the other, one message at a time.")
        histories = gr.State({name: [] for name in names})
        last = gr.State({})
        picked = gr.State(None)
        with gr.Row():
            # Plain text (as_text), no LaTeX; no copy buttons, which would copy the escaped text.
            chatbots = [gr.Chatbot(label=name, elem_id=f"chat-{name}", height=420, render_markdown=False,
                                   sanitize_html=True, allow_tags=False, latex_delimiters=[], buttons=[])
                        for name in names]
        with gr.Row():
            message = gr.Textbox(label="Instruction" if one_instruction else "Message", elem_id="message", scale=4,
                                 placeholder="Ask both models something", lines=2)
            extra = gr.Textbox(label="Input (optional)", elem_id="input", scale=2, lines=2, visible=one_instruction)
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            stop = gr.Button("Stop", elem_id="stop")
            regenerate = gr.Button("Regenerate", elem_id="regenerate")
            clear = gr.Button("Clear", elem_id="clear")
        with gr.Accordion("Generation settings", open=False):
            with gr.Row():
                temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0: greedy, as stage 2)")
                top_p = gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p")
                length = gr.Slider(8, 1024, value=max_new_tokens, step=8, label="Max new tokens")
                seed = gr.Number(0, precision=0, label="Seed (sampling)")
            gr.Markdown(f"Answers stop at the **{session.style.name}** style's markers: "
                        f"{', '.join(f'`{s}`' for s in session.style.stop_strings) or 'the chat template end'}.")
        with gr.Accordion(f"Test records ({len(session.examples)})", open=bool(session.examples)):
            choices = [(f"{i}: {r['instruction'][:90]}", i) for i, r in enumerate(session.examples)]
            example = gr.Dropdown(choices, value=None, label="Pick one: it fills the message; Send asks the models",
                                  elem_id="example")
            # A Textbox, not Markdown: a stored response or a model's name is shown as it is.
            details = gr.Textbox(label="Expected output and stored responses", elem_id="example-details",
                                 interactive=False, lines=4, max_lines=20)
        with gr.Row():
            preference = gr.Radio([f"{name} better" for name in names] + [TIE], label="Which answer is better?",
                                  elem_id="preference")
            ratings = [gr.Textbox(label=f"{name}: your rating 0-100", placeholder="optional", elem_id=f"rating-{name}")
                       for name in names]
            save = gr.Button("Save rating", elem_id="save-rating")
        status = gr.Textbox(elem_id="status", show_label=False, container=False, interactive=False)  # text, as details

        def pick(index):
            unchanged = [gr.update() for _ in names] + [gr.update(), gr.update()]  # chats, histories, last exchange
            if index is None:
                return gr.update(), gr.update(), "", None, *unchanged
            record = session.examples[index]
            fields = *session.page_message(record), session.describe_example(index), index
            if one_instruction:
                return *fields, *unchanged
            # A conversation starts from the record's earlier turns (system prompt included), as stage 2
            # answered it; the exchange on the page before is gone, so is its rating and regeneration
            earlier = earlier_turns(record)
            return *fields, *[shown(earlier) for _ in names], {n: list(earlier) for n in names}, {}

        def shown(history: list, current: str | None = None, answer: str | None = None) -> list:
            turns = [turn for turn in history if turn["role"] != "system"]  # sent, not shown as a chat bubble
            turns += [{"role": "user", "content": current}] if current else []
            turns += [{"role": "assistant", "content": answer}] if answer is not None else []
            return [{**turn, "content": as_text(turn["content"])} for turn in turns]

        def respond(text, extra_text, index, state, temperature, top_p, length, seed, request: gr.Request):
            text, extra_text = (text or "").strip(), (extra_text or "").strip()
            if not text:
                raise gr.Error("Type a message first.")
            record = {"instruction": text, "input": extra_text if one_instruction else ""}
            settings = settings_of(temperature, top_p, length, seed)
            shown_user = user_text(record)
            answers: dict[str, str] = {}
            started = time.perf_counter()
            for answers in session.answer(state, record, settings, request.session_hash):
                yield *[shown(state[n], shown_user, answers.get(n)) for n in names], state, {}, "Answering…"
            state = {n: state[n] + [{"role": "user", "content": shown_user},
                                    {"role": "assistant", "content": answers.get(n, "")}] for n in names}
            exchange = {"message": text, "input": record["input"], "record_index": session.example_index(text, extra_text, index),
                        "prompt_style": session.style.name, "settings": settings, "answers": answers,
                        "history_turns": len(state[names[0]]) // 2 - 1}
            done = "Stopped after" if session.stopped(request.session_hash) else "Answered in"
            yield *[shown(state[n]) for n in names], state, exchange, f"{done} {time.perf_counter() - started:.1f} s."

        def undo_last(state, exchange):
            """Regenerate: drop the last turn and ask its message again (with the settings now set)."""
            if not exchange:
                raise gr.Error("Nothing to regenerate yet.")
            state = {n: state[n][:-2] for n in names}
            return *[shown(state[n]) for n in names], state, exchange["message"], exchange["input"]

        def rate(choice, exchange, *values):
            try:
                return session.rate(exchange, choice.removesuffix(" better") if choice else None,
                                    dict(zip(names, values)))
            except UserError as exc:  # it may quote a file: a hand-edited human_ratings.json, say
                raise gr.Error(as_text(str(exc))) from exc

        def stop_now(request: gr.Request):
            session.stop(request.session_hash)

        answer_inputs = [message, extra, picked, histories, temperature, top_p, length, seed]
        answer_outputs = [*chatbots, histories, last, status]
        example.change(pick, example, [message, extra, details, picked, *chatbots, histories, last], queue=False,
                       api_name="pick")
        # One generation at a time across every browser: a 2-core CPU runs one well, two badly.
        send.click(respond, answer_inputs, answer_outputs, concurrency_id="model", concurrency_limit=1, api_name="chat")
        message.submit(respond, answer_inputs, answer_outputs, concurrency_id="model", concurrency_limit=1, api_name=False)
        regenerate.click(undo_last, [histories, last], [*chatbots, histories, message, extra], queue=False).then(
            respond, answer_inputs, answer_outputs, concurrency_id="model", concurrency_limit=1)
        stop.click(stop_now, None, None, queue=False, api_name="stop")  # not behind the answer it stops
        clear.click(lambda: (*[[] for _ in names], {n: [] for n in names}, {}, ""), None, answer_outputs, queue=False)
        save.click(rate, [preference, last, *ratings], status, concurrency_limit=None, api_name="rate")
    app.queue(max_size=max_queue)
    return app, theme


def require_free_port(host: str, port: int) -> None:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot serve on {host}:{port}: {exc.strerror} (is the app already running? "
                            "choose another with --port)") from exc


def serve(config: ChatConfig) -> None:
    """Load the models, then serve the page until Ctrl-C (or take the screenshot and exit)."""
    require_free_port(config.host, config.port)
    session = ChatSession(config)
    app, theme = build_app(session, config.max_new_tokens, config.max_queue)
    # No server-side rendering, whatever GRADIO_SSR_MODE says: it puts a Node server in front of the host check.
    launch = dict(server_name=config.host, server_port=config.port, share=config.share, theme=theme,
                  footer_links=["api"], quiet=True, ssr_mode=False, app_kwargs={"middleware": host_check(config.host)})
    if config.screenshot:
        app.launch(prevent_thread_lock=True, **launch)
        try:
            take_screenshot(f"http://{config.host}:{config.port}/", Path(config.screenshot), session)
        finally:
            app.close()
        return
    print(f"chat app on http://{config.host}:{config.port}/ (Ctrl-C stops it; ratings go to "
          f"{session.output_dir / HUMAN_FILE})", flush=True)
    app.launch(**launch)


def wait_for_status(page, start: str, timeout_s: float = 300) -> None:
    """Until the page's status line starts with `start`."""
    page.wait_for_function("start => document.querySelector('#status textarea').value.startsWith(start)",
                           arg=start, timeout=timeout_s * 1000)


def wait_for_answers(page, timeout_s: float = 300) -> None:
    """Until the page says every model has answered."""
    wait_for_status(page, "Answered in", timeout_s)


def take_screenshot(url: str, path: Path, session: ChatSession) -> None:
    """The page after the first example is answered, as a PNG (headless Chromium, as the tests drive it)."""
    from instructkit.app.browser import open_page

    with open_page(url) as page:
        if session.examples:
            page.locator("#example input").click()
            page.get_by_role("option").first.click()
            page.wait_for_function("() => document.querySelector('#message textarea').value !== ''")
        else:
            page.locator("#message textarea").fill("Give three tips for staying healthy.")
        page.locator("#send").click()
        wait_for_answers(page)
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
