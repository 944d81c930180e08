"""Stage 2: base and finetuned models answer every test record (`test_base_model.json`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from instructkit.data.parity import check_parity, stop_ids
from instructkit.data.prompts import PromptStyle, load_style
from instructkit.data.questions import MT_RESPONSES_FILE, questions_file, read_questions
from instructkit.data.records import Record, split_file, validate_records
from instructkit.data.responses import RESPONSE_FIELDS, RESPONSES_FILE, response_field
from instructkit.errors import UserError
from instructkit.generate.compare import FailedRequest, compare_input, load_compare, parse_compare, with_preference_model
from instructkit.generate.config import GenerationConfig
from instructkit.models.backends import Reply, context_length
from instructkit.models.finetune import RunModels
from instructkit.models.loading import load_causal_lm, load_tokenizer
from instructkit.models.precision import precision_setting, resolve_precision
from instructkit.models.references import ResolvedModel, resolve_model, trained_prompts
from instructkit.runs.artifacts import manifest, output_lock, read_json
from instructkit.runs.fingerprints import path_input, same_input, same_settings
from instructkit.runs.reuse import ProgressLog, open_work

# What the responses depend on besides the input files (those are fingerprinted).
RESPONSE_SETTINGS = ("models", "max_new_tokens", "max_prompt_tokens", "batch_size", "limit", "engine")
# Settings that choose which columns are answered, not how: a column made under other ones is reused.
COLUMN_CHOICES = ("models",)


def clean_response(text: str, stop_strings: tuple[str, ...]) -> str:
    """Cut at the first section marker a model writes after its answer, and trim whitespace."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut].strip()


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar prompt length, so little compute goes to padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class StopAtStrings(StoppingCriteria):
    """Ends a row once its new text holds one of the prompt style's markers. Only the last few new
    tokens of each row are decoded per step: transformers' own `stop_strings` check cost about a
    third of every decode step (bench/generation_speed.py). Checked at every step, a marker is found
    within those tokens when it completes; `clean_response` then cuts the text at it, as before."""

    def __init__(self, tokenizer, stop_strings: tuple[str, ...], prompt_length: int):
        self.tokenizer, self.stop_strings, self.prompt_length = tokenizer, stop_strings, prompt_length
        longest = max(len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in stop_strings)
        self.window = 2 * longest + 2  # room for a marker that tokenizes differently after other text

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        start = max(self.prompt_length, input_ids.shape[1] - self.window)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([any(s in tail for s in self.stop_strings) for tail in tails], device=input_ids.device)


class TransformersGenerator:
    """Batched decoding (greedy unless asked to sample) with one model load: the base answers with
    the adapter disabled."""

    def render(self, style: PromptStyle, record: Record, history: list[dict[str, str]] = ()) -> str:
        """The prompt for `record`, after the earlier turns of its conversation if there are any."""
        return style.render_turn(list(history), record, self.tokenizer)

    def prompt_ids(self, style: PromptStyle, record: Record, history: list[dict[str, str]] = ()) -> list[int]:
        """The token ids the model is given for `record`: what the template parity check compares."""
        return style.encode(self.render(style, record, history), self.tokenizer)

    def stop_ids(self, style: PromptStyle) -> list[int]:
        return stop_ids((self.model or self.merged).generation_config, style, self.tokenizer)

    def check_parity(self, style: PromptStyle, adapter: Path, path: str) -> dict:
        """Stage 1's saved prompts rebuilt by this generator (`path` names the caller), see parity.py."""
        return check_parity(trained_prompts(adapter), {path: lambda record: self.prompt_ids(style, record)}, self.stop_ids(style),
                            self.tokenizer)

    def lengths(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]

    def prompt_limit(self, max_prompt_tokens: int, max_new_tokens: int) -> int | None:
        """The longest prompt answered, in tokens: --max-prompt-tokens, and never past the context
        the model was built for (None: no limit; below 1 when the answer alone fills the context)."""
        context = context_length((self.model or self.merged).config)
        limits = ([max_prompt_tokens] if max_prompt_tokens > 0 else []) + ([context - max_new_tokens] if context else [])
        return min(limits) if limits else None

    def __init__(self, base: ResolvedModel, adapter: Path | None, merged: str, trust_remote_code: bool,
                 models: list[str], dtype: torch.dtype | None = None, quantization: dict | None = None):
        self.tokenizer = load_tokenizer(base, trust_remote_code)
        self.tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        self.merged = (load_causal_lm(resolve_model(merged), trust_remote_code=trust_remote_code, dtype=dtype).eval()
                       if merged else None)
        self.model = None  # the base, with the adapter unless a merged model answers for it
        if "base" in models or not merged:
            self.model = load_causal_lm(base, quantization=quantization, trust_remote_code=trust_remote_code,
                                        dtype=dtype).eval()
            if adapter is not None and not merged:
                from peft import PeftModel

                self.model = PeftModel.from_pretrained(self.model, adapter).eval()

    @classmethod
    def loaded(cls, model, tokenizer) -> TransformersGenerator:
        """A generator over a model already in memory (one transformers read from a GGUF file), which
        answers as `base`."""
        generator = cls.__new__(cls)
        generator.tokenizer, generator.model, generator.merged = tokenizer, model.eval(), None
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return generator

    def _inputs(self, prompts: list[str], style: PromptStyle):
        # A chat template writes its own <bos>; plain prompts get it from the tokenizer, as in training.
        return self.tokenizer(prompts, return_tensors="pt", padding=True,
                              add_special_tokens=not style.is_chat).to((self.model or self.merged).device)

    def _decoding_kwargs(self, max_new_tokens: int, style: PromptStyle, prompt_length: int, temperature: float = 0.0,
                         top_p: float = 1.0) -> dict:
        """Greedy, or sampled at `temperature` > 0; the same stops either way."""
        stops = [StopAtStrings(self.tokenizer, style.stop_strings, prompt_length)] if style.stop_strings else []
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
        return dict(max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.stop_ids(style), stopping_criteria=StoppingCriteriaList(stops), **sampling)

    @contextmanager
    def _answering(self, model: str):
        """The model object that answers as `model`: the merged finetune, or the base with its
        adapter on (finetuned) or off (base)."""
        if model == "finetuned" and self.merged is not None:
            yield self.merged
        elif model == "base" and hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model

    def generate(self, model: str, prompts: list[str], max_new_tokens: int, style: PromptStyle) -> tuple[list[str], int]:
        """Greedy responses to `prompts`, and how many tokens were generated for them."""
        texts, new_tokens = self._decode(model, prompts, max_new_tokens, style)
        generated = sum(int((t != self.tokenizer.pad_token_id).sum()) for t in new_tokens)
        return [clean_response(t, style.stop_strings) for t in texts], generated

    def sample(self, model: str, prompts: list[str], max_new_tokens: int, style: PromptStyle, *, temperature: float,
               top_p: float, seed: int) -> list[Reply]:
        """Responses sampled from `seed` (the global random state is left as it was); one that ran
        to `max_new_tokens` without ending is marked truncated."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            texts, new_tokens = self._decode(model, prompts, max_new_tokens, style, temperature, top_p)
        stops = set(self.stop_ids(style))
        return [Reply(clean_response(text, style.stop_strings),
                      truncated=len(tokens) >= max_new_tokens and not stops & set(tokens.tolist())
                      and not any(s in text for s in style.stop_strings))
                for text, tokens in zip(texts, new_tokens)]

    def _decode(self, model: str, prompts: list[str], max_new_tokens: int, style: PromptStyle, temperature: float = 0.0,
                top_p: float = 1.0) -> tuple[list[str], list[torch.Tensor]]:
        """Each prompt's new tokens, and their text before the stop strings are cut."""
        inputs = self._inputs(prompts, style)
        with torch.inference_mode(), self._answering(model) as answering:
            new_tokens = self._new_tokens(answering, inputs, max_new_tokens, style, temperature, top_p)
        return self.tokenizer.batch_decode([t.tolist() for t in new_tokens], skip_special_tokens=True), new_tokens

    # Steps a batch decodes before its finished rows leave it (bench/generation_speed.py).
    span = 16

    def _new_tokens(self, model, inputs, max_new_tokens: int, style: PromptStyle, temperature: float = 0.0,
                    top_p: float = 1.0) -> list[torch.Tensor]:
        """Each row's new tokens. Decoding goes `span` steps at a time; between spans the rows that
        have finished leave the batch, with their rows of the KV cache, and the rest continue from
        the cache (transformers' documented way to continue a generation). A batch otherwise costs
        its longest answer times all of its rows: at batch 32, most rows had long finished."""
        prompt_length = inputs["input_ids"].shape[1]
        ids, mask, cache = inputs["input_ids"], inputs["attention_mask"], None
        rows = torch.arange(ids.shape[0], device=ids.device)
        new: list[list[torch.Tensor]] = [[] for _ in range(ids.shape[0])]
        eos = torch.tensor(self.stop_ids(style), device=ids.device)
        while True:
            steps = min(self.span, prompt_length + max_new_tokens - ids.shape[1])
            out = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, return_dict_in_generate=True,
                                 **self._decoding_kwargs(steps, style, prompt_length, temperature, top_p))
            added = out.sequences[:, ids.shape[1]:]
            for row, tokens in zip(rows.tolist(), added):
                new[row].append(tokens)
            if added.shape[1] < steps or out.sequences.shape[1] >= prompt_length + max_new_tokens:
                break  # every row stopped, or the length limit is reached
            answer = out.sequences[:, prompt_length:]
            texts = self.tokenizer.batch_decode(answer, skip_special_tokens=True)
            live = ~(torch.isin(answer, eos).any(1) |
                     torch.tensor([any(s in t for s in style.stop_strings) for t in texts], device=ids.device))
            keep = live.nonzero().squeeze(1)
            if len(keep) == 0:
                break
            cache = out.past_key_values
            if len(keep) < len(rows):
                cache.batch_select_indices(keep)
            ids, rows = out.sequences[keep], rows[keep]
            mask = torch.cat([mask, torch.ones_like(added)], dim=1)[keep]
        return [torch.cat(tokens) for tokens in new]

    def stream(self, model: str, prompt: str, max_new_tokens: int, style: PromptStyle, *, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0, stop: threading.Event | None = None) -> Iterator[str]:
        """One response, as the text so far after each new token. Greedy by default, with the same
        inputs and settings as `generate`, so its last text is what stage 2 writes for the prompt;
        `stop` set from another thread ends it after the current token."""
        from transformers import TextIteratorStreamer

        class StopWhenSet(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop is not None and stop.is_set(), dtype=torch.bool)

        inputs = self._inputs([prompt], style)
        kwargs = self._decoding_kwargs(max_new_tokens, style, inputs["input_ids"].shape[1], temperature, top_p)
        kwargs["stopping_criteria"].append(StopWhenSet())
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def run() -> None:
            torch.manual_seed(seed)
            try:
                with torch.inference_mode(), self._answering(model) as answering:
                    result["output"] = answering.generate(**inputs, **kwargs, streamer=streamer)
            except BaseException as exc:  # shown to the caller, not lost in the thread
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text = ""
        try:
            for piece in streamer:
                text += piece
                yield clean_response(text, style.stop_strings)
        except GeneratorExit:  # the caller went away: end the generation too
            if stop is not None:
                stop.set()
            raise
        finally:
            thread.join()
        if "error" in result:
            raise result["error"]
        # The whole answer decoded at once, exactly as `generate` decodes it.
        new_tokens = result["output"][0, inputs["input_ids"].shape[1]:]
        yield clean_response(self.tokenizer.decode(new_tokens, skip_special_tokens=True), style.stop_strings)


class VllmGenerator:
    """vLLM with the adapter as a LoRA request; for GPU users who installed vllm."""

    render = TransformersGenerator.render
    lengths = TransformersGenerator.lengths
    prompt_ids = TransformersGenerator.prompt_ids
    check_parity = TransformersGenerator.check_parity

    def stop_ids(self, style: PromptStyle) -> list[int]:
        return stop_ids((self.llm or self.merged_llm).llm_engine.get_model_config().hf_config, style, self.tokenizer)

    def prompt_limit(self, max_prompt_tokens: int, max_new_tokens: int) -> int | None:
        return max_prompt_tokens or None  # vLLM refuses a prompt past the model's context itself

    def __init__(self, base: ResolvedModel, adapter: Path | None, merged: str, trust_remote_code: bool,
                 models: list[str], dtype: torch.dtype | None = None, quantization: dict | None = None):
        if quantization and ("base" in models or not merged):
            raise UserError("--engine vllm does not load a QLoRA adapter's base in 4-bit here: pass --unquantized-base "
                            "(or --merged), or use --engine transformers")
        try:
            from vllm import LLM
        except ImportError as exc:
            raise UserError("--engine vllm needs vLLM on a CUDA GPU (pip install vllm); "
                            "the default --engine transformers needs nothing more") from exc
        self.adapter = adapter
        vllm_dtype = str(dtype).removeprefix("torch.") if dtype is not None else "auto"
        self.merged_llm = LLM(model=resolve_model(merged).path, dtype=vllm_dtype) if merged else None
        self.llm = None
        if "base" in models or not merged:
            self.llm = LLM(model=base.path, enable_lora=adapter is not None and not merged,
                           trust_remote_code=trust_remote_code, dtype=vllm_dtype)
        self.tokenizer = (self.llm or self.merged_llm).get_tokenizer()

    def generate(self, model: str, prompts: list[str], max_new_tokens: int, style: PromptStyle) -> tuple[list[str], int]:
        """Responses to `prompts`, and how many tokens were generated for them."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        stop_strings = style.stop_strings
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stop_strings) or None,
                                stop_token_ids=self.stop_ids(style))
        # Token ids, not text: vLLM would add a second BOS to a chat template's own (template parity)
        prompts = [{"prompt_token_ids": style.encode(prompt, self.tokenizer)} for prompt in prompts]
        if model == "finetuned" and self.merged_llm is not None:
            outputs = self.merged_llm.generate(prompts, params)
        else:
            lora = LoRARequest("finetuned", 1, str(self.adapter)) if model == "finetuned" and self.adapter else None
            outputs = self.llm.generate(prompts, params, lora_request=lora)
        generated = sum(len(o.outputs[0].token_ids) for o in outputs)
        return [clean_response(o.outputs[0].text, stop_strings) for o in outputs], generated


def generate_responses(config: GenerationConfig) -> Path:
    """Run stage 2 and return the path of `test_base_model.json` (or, with --questions, of
    `mt_bench_responses.json`)."""
    output_dir = Path(config.output_dir)
    test_file = split_file(output_dir, "test", config.test_file)
    run = RunModels.of(config, output_dir, config.models)
    compared = with_preference_model(parse_compare(config.compare), run.preference(output_dir))
    base, adapter, models = run.base, run.adapter, list(run.roles)
    style: PromptStyle = load_style(adapter)
    if config.questions:  # conversations of one or more user turns
        final_path, source = output_dir / MT_RESPONSES_FILE, questions_file(config.questions)
        items = read_questions(source)
        conversations = [[{"instruction": turn, "input": ""} for turn in q["turns"]] for q in items]
    else:  # one instruction each
        final_path, source = output_dir / RESPONSES_FILE, test_file
        items = validate_records(read_json(test_file), str(test_file))
        conversations = [[record] for record in items]
    if config.limit > 0:
        items, conversations = items[:config.limit], conversations[:config.limit]

    inputs = {"questions" if config.questions else "test_file": path_input(source)}
    if "finetuned" in models:
        inputs["finetuned"] = run.finetuned_input()
    if run.loads_base:
        inputs["base_model"] = run.base_input()
    for model in compared:
        inputs[f"compare_{model.name}"] = compare_input(model, config.compare_base_url)
    settings = {k: v for k, v in asdict(config).items() if k in RESPONSE_SETTINGS}
    if config.questions:  # the file itself is fingerprinted with the inputs
        settings["questions"] = True
    settings["prompt_style"] = style.name
    settings["compare"] = [m.name for m in compared]
    precision = resolve_precision(config.precision, "inference")
    settings |= precision_setting(precision) | run.quantization_setting()
    with output_lock(output_dir, "generate"):
        work = open_work(final_path, settings, inputs, overwrite=config.overwrite, restart=config.restart,
                         stage="stage 2", verb="generating")
        if work.progress is None:
            return final_path
        progress = work.progress
        columns = models + [m.name for m in compared]
        turns = Turns(conversations, multi=bool(config.questions))
        if not config.overwrite and not config.questions:
            _reuse_columns(work.finished, progress, final_path, len(items), columns)
        engine_cls = VllmGenerator if config.engine == "vllm" else TransformersGenerator
        timings: dict[str, dict] = {}
        parity = None  # checked when the adapter is loaded
        if any(not turns.finished(m, progress) for m in models):
            generator = engine_cls(base, adapter if "finetuned" in models else None, config.merged,
                                   config.trust_remote_code, models, precision.dtype, run.quantization)
            if "finetuned" in models and not config.merged:
                parity = generator.check_parity(style, adapter, f"stage 2 ({config.engine})")
            timings = {m: _answer_all(generator, m, turns, style, config, progress) for m in models}
        styles = {m: style.name for m in models}
        for model in compared:  # one model in memory at a time
            if turns.finished(model.name, progress):  # reused whole
                styles[model.name] = (work.finished or {}).get("prompt_styles", {}).get(model.name)
                continue
            generator, role, its_style = load_compare(
                model, style, engine_cls, base_url=config.compare_base_url, concurrency=config.concurrency,
                max_retries=config.max_retries, timeout=config.request_timeout, trust_remote_code=config.trust_remote_code, dtype=precision.dtype)
            styles[model.name] = its_style.name
            timings[model.name] = _answer_all(generator, model.name, turns, its_style, config, progress, role)
            del generator

        fields = list(RESPONSE_FIELDS) + [m.name for m in compared]
        rows = [{**item, **{response_field(m): turns.answers(m, i, progress) for m in fields}}
                for i, item in enumerate(items)]
        work.finish(rows, manifest(
            stage="part2_generate_test_responses",
            prompt_style=style.name,
            prompt_styles=styles,
            template_parity=parity,
            n_records=len(items),
            models=columns,
            compare={m.name: m.reference for m in compared},
            **precision.describe(),
            timings=timings,
        ))
    print(f"\n== stage 2 done: {len(rows)} {'questions' if config.questions else 'records'}, models "
          f"{', '.join(columns)}\nresponses: {final_path}")
    for model, timing in timings.items():
        print(f"  {model}: {timing['seconds']} s, {timing['generated_tokens_per_second']} generated tokens/s")
    return final_path


class Turns:
    """The user turns to answer: one per test record, or several per question. A test record's answer
    is logged as (model, record); turn t of a conversation as (model, question, t)."""

    def __init__(self, conversations: list[list[Record]], multi: bool):
        self.conversations, self.multi = conversations, multi

    def key(self, model: str, index: int, turn: int) -> tuple:
        return (model, index, turn) if self.multi else (model, index)

    def finished(self, model: str, progress: ProgressLog) -> bool:
        return all(self.key(model, i, t) in progress.done
                   for i, conversation in enumerate(self.conversations) for t in range(len(conversation)))

    def answers(self, model: str, index: int, progress: ProgressLog):
        """A test record's answer, or a conversation's answers turn by turn (None where not answered)."""
        answers = [progress.done.get(self.key(model, index, t)) for t in range(len(self.conversations[index]))]
        return answers if self.multi else answers[0]

    def history(self, model: str, index: int, turn: int, progress: ProgressLog) -> list[dict[str, str]]:
        """The conversation before `turn`, with the model's own earlier answers."""
        history = []
        for t in range(turn):
            history += [{"role": "user", "content": self.conversations[index][t]["instruction"]},
                        {"role": "assistant", "content": progress.done[self.key(model, index, t)] or ""}]
        return history


# The inputs each column's answers are made from (a compare model's: its own entry).
COLUMN_INPUTS = {"base": ("test_file", "base_model"), "finetuned": ("test_file", "finetuned", "base_model")}


def _reuse_columns(finished: dict | None, progress: ProgressLog, final_path: Path, n_records: int,
                   columns: list[str]) -> None:
    """Keep the finished file's answers of every column whose own inputs and the settings are this
    run's: after a retraining the base model's answers, after adding a --compare model all the others."""
    if not finished or "inputs" not in finished:
        return
    def unchosen(settings: dict | None) -> dict:
        return {k: v for k, v in (settings or {}).items() if k not in COLUMN_CHOICES + ("compare",)}
    if not same_settings(unchosen(finished.get("settings")), unchosen(progress.settings)):
        return
    rows = read_json(final_path)
    for column in columns:
        needs = COLUMN_INPUTS.get(column, ("test_file", f"compare_{column}"))
        if column not in finished.get("models", []) or any(
                not same_input(finished["inputs"].get(name), progress.inputs.get(name)) for name in needs):
            continue
        # A null is an answer (a refusal, a prompt past the limit), unless the output is incomplete:
        # then it may be a request that got no answer, to be asked again.
        reusable = [((column, i), rows[i].get(response_field(column))) for i in range(min(n_records, len(rows)))
                    if (column, i) not in progress.done
                    and (rows[i].get(response_field(column)) is not None or not finished.get("failed_items"))]
        if reusable:
            progress.add(reusable)
            print(f"reusing the {column} model's {len(reusable)} responses from {final_path} "
                  "(same model, test split and settings)")


def _answer_all(generator, model: str, turns: Turns, style: PromptStyle, config: GenerationConfig,
                progress: ProgressLog, role: str | None = None) -> dict:
    """Answer every turn not yet in the progress log, turn 1 of every conversation before turn 2;
    return this run's timing for `model`.

    Batches are fixed from all of a turn's prompt lengths, so a resumed run pads every prompt exactly
    as an uninterrupted one does and greedy decoding gives the same tokens; a batch only partly
    logged when the run was killed is generated again whole.
    """
    started, new_tokens, answered = time.perf_counter(), 0, 0
    limit = generator.prompt_limit(config.max_prompt_tokens, config.max_new_tokens)
    too_long: list[int] = []
    for turn in range(max(len(c) for c in turns.conversations)):
        # A conversation goes on only where every earlier turn was answered (a served model's
        # request can fail; the next run asks it again).
        indexes = [i for i, c in enumerate(turns.conversations)
                   if turn < len(c) and all(turns.key(model, i, t) in progress.done for t in range(turn))]
        prompts = [generator.render(style, turns.conversations[i][turn], turns.history(model, i, turn, progress))
                   for i in indexes]
        lengths = generator.lengths(prompts)
        label = f"[{model}{f' turn {turn + 1}' if turns.multi else ''}]"
        # Cutting a prompt would change the question: one past the limit is not answered (null).
        over = [j for j, n in enumerate(lengths) if limit is not None and n > limit]
        too_long += [indexes[j] for j in over]
        progress.add([(turns.key(model, indexes[j], turn), None) for j in over
                      if turns.key(model, indexes[j], turn) not in progress.done])
        if over:
            print(f"warning: {label} {len(over)} prompts are longer than {limit} tokens (--max-prompt-tokens, "
                  f"and the model's context less --max-new-tokens) and are not answered: records "
                  f"{', '.join(map(str, [indexes[j] for j in over][:10]))}{' ...' if len(over) > 10 else ''}")
        fits = [j for j in range(len(prompts)) if j not in set(over)]
        batches = [[fits[k] for k in batch] for batch in
                   length_sorted_batches([lengths[j] for j in fits], config.batch_size)]
        todo = [batch for batch in batches if any(turns.key(model, indexes[j], turn) not in progress.done for j in batch)]
        for number, batch in enumerate(todo, start=1):
            responses, generated = generator.generate(role or model, [prompts[j] for j in batch], config.max_new_tokens, style)
            progress.settle([(turns.key(model, indexes[j], turn), r) for j, r in zip(batch, responses)],
                            failed=lambda response: isinstance(response, FailedRequest))
            new_tokens, answered = new_tokens + generated, answered + len(batch)
            finished = sum(turns.key(model, i, turn) in progress.done for i in indexes)
            print(f"{label} batch {number}/{len(todo)}: {finished}/{len(indexes)} answered", flush=True)
    seconds = time.perf_counter() - started
    return {
        "records_this_run": answered,
        "seconds": round(seconds, 2),
        "generated_tokens": new_tokens,
        "generated_tokens_per_second": round(new_tokens / seconds, 2) if answered and seconds else None,
        "prompt_limit_tokens": limit,
        "prompts_over_limit": sorted(set(too_long)),
    }
