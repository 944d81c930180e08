"""Stage 2: base and finetuned models answer every test record (`test_base_model.json`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .artifacts import RESPONSE_FIELDS, RESPONSES_FILE, manifest, output_lock, read_json, response_field
from .compare_models import compare_input, load_compare, parse_compare
from .data import Record, validate_records
from .errors import UserError
from .models import (
    ResolvedModel,
    base_reference,
    load_causal_lm,
    load_tokenizer,
    require_adapter,
    resolve_model,
    run_adapter,
)
from .progress import ProgressLog, open_work
from .prompts import PromptStyle, load_style
from .provenance import finetuned_input, model_input, path_input

# What the responses depend on besides the input files (those are fingerprinted).
RESPONSE_SETTINGS = ("models", "max_new_tokens", "batch_size", "limit", "engine")
# Settings that choose which columns are answered, not how: a column made under other ones is reused.
COLUMN_CHOICES = ("models",)


@dataclass
class GenerationConfig:
    test_file: str = field(default="", metadata={"help": "Alpaca records to answer (default: stage 1's split, <output-dir>/data/test.json)"})
    adapter: str = field(default="", metadata={"help": "stage 1's adapter folder with prompt_style.json (default: <output-dir>/finetuned)"})
    base_model: str = field(default="", metadata={"help": "base model reference (default: the one stage 1 trained on)"})
    merged: str = field(default="", metadata={"help": "a merged finetuned model folder to use instead of base + adapter"})
    output_dir: str = field(default="outputs", metadata={"help": f"the run folder: stage 1's outputs are read from it, {RESPONSES_FILE} and its .meta.json written to it"})
    models: str = field(default="both", metadata={"help": "which models answer", "choices": ["both", "base", "finetuned"]})
    max_new_tokens: int = field(default=128, metadata={"help": "longest response, in tokens"})
    batch_size: int = field(default=8, metadata={"help": "prompts per generate() call (grouped by length)"})
    limit: int = field(default=0, metadata={"help": "answer only the first N test records (0: all)"})
    engine: str = field(default="transformers", metadata={"help": "transformers (default, tested) or vllm (GPU, if installed)", "choices": ["transformers", "vllm"]})
    overwrite: bool = field(default=False, metadata={"help": "generate again although the finished output matches its inputs (partial results of such a run are kept and resumed)"})
    restart: bool = field(default=False, metadata={"help": "discard partial results of an interrupted run instead of resuming them"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub (only for models you trust)"})
    compare: list[str] = field(default_factory=list, metadata={"help": "more models that answer too, NAME=MODEL each: an embedded name, hub id, model folder, merged finetune, .gguf file, another run's adapter folder, or openai:<model> (with --compare-base-url); writes <NAME>_model_response"})
    compare_base_url: str = field(default="", metadata={"help": "the OpenAI-compatible server of openai: compare models (the key comes from OPENAI_API_KEY)"})
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once for openai: compare models"})


def clean_response(text: str, stop_strings: tuple[str, ...]) -> str:
    """Cut at the first section marker a model writes after its answer, and trim whitespace."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut].strip()


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar prompt length, so little compute goes to padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class TransformersGenerator:
    """Batched greedy decoding with one model load: the base answers with the adapter disabled."""

    def render(self, style: PromptStyle, record: Record) -> str:
        return style.render(record, self.tokenizer)

    def lengths(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]

    def __init__(self, base: ResolvedModel, adapter: Path | None, merged: str, trust_remote_code: bool,
                 models: list[str]):
        self.tokenizer = load_tokenizer(base, trust_remote_code)
        self.tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
        self.merged = load_causal_lm(resolve_model(merged), trust_remote_code=trust_remote_code).eval() if merged else None
        self.model = None  # the base, with the adapter unless a merged model answers for it
        if "base" in models or not merged:
            self.model = load_causal_lm(base, trust_remote_code=trust_remote_code).eval()
            if adapter is not None and not merged:
                from peft import PeftModel

                self.model = PeftModel.from_pretrained(self.model, adapter).eval()

    def _inputs(self, prompts: list[str], style: PromptStyle):
        # A chat template writes its own <bos>; plain prompts get it from the tokenizer, as in training.
        return self.tokenizer(prompts, return_tensors="pt", padding=True,
                              add_special_tokens=style.name != "chat").to((self.model or self.merged).device)

    def _greedy_kwargs(self, max_new_tokens: int, style: PromptStyle) -> dict:
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
        if style.stop_strings:
            kwargs.update(stop_strings=list(style.stop_strings), tokenizer=self.tokenizer)
        return kwargs

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
        """Responses to `prompts`, and how many tokens were generated for them."""
        inputs = self._inputs(prompts, style)
        with torch.inference_mode(), self._answering(model) as answering:
            output = answering.generate(**inputs, **self._greedy_kwargs(max_new_tokens, style))
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        generated = int((new_tokens != self.tokenizer.pad_token_id).sum())
        return [clean_response(t, style.stop_strings) for t in texts], generated

    def stream(self, model: str, prompt: str, max_new_tokens: int, style: PromptStyle, *, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0, stop: threading.Event | None = None) -> Iterator[str]:
        """One response, as the text so far after each new token. Greedy by default, with the same
        inputs and settings as `generate`, so its last text is what stage 2 writes for the prompt;
        `stop` set from another thread ends it after the current token."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class StopWhenSet(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop is not None and stop.is_set(), dtype=torch.bool)

        inputs = self._inputs([prompt], style)
        kwargs = self._greedy_kwargs(max_new_tokens, style)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def run() -> None:
            torch.manual_seed(seed)
            try:
                with torch.inference_mode(), self._answering(model) as answering:
                    result["output"] = answering.generate(**inputs, **kwargs, streamer=streamer,
                                                          stopping_criteria=StoppingCriteriaList([StopWhenSet()]))
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
        finally:
            if stop is not None and thread.is_alive():  # the caller went away: end the generation too
                stop.set()
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

    def __init__(self, base: ResolvedModel, adapter: Path | None, merged: str, trust_remote_code: bool,
                 models: list[str]):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise UserError("--engine vllm needs vLLM on a CUDA GPU (pip install vllm); "
                            "the default --engine transformers needs nothing more") from exc
        self.adapter = adapter
        self.merged_llm = LLM(model=resolve_model(merged).path) if merged else None
        self.llm = None
        if "base" in models or not merged:
            self.llm = LLM(model=base.path, enable_lora=adapter is not None and not merged,
                           trust_remote_code=trust_remote_code)
        self.tokenizer = (self.llm or self.merged_llm).get_tokenizer()

    def generate(self, model: str, prompts: list[str], max_new_tokens: int, style: PromptStyle) -> tuple[list[str], int]:
        """Responses to `prompts`, and how many tokens were generated for them."""
        from vllm import SamplingParams

        stop_strings = style.stop_strings
        from vllm.lora.request import LoRARequest

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stop_strings) or None)
        if model == "finetuned" and self.merged_llm is not None:
            outputs = self.merged_llm.generate(prompts, params)
        else:
            lora = LoRARequest("finetuned", 1, str(self.adapter)) if model == "finetuned" and self.adapter else None
            outputs = self.llm.generate(prompts, params, lora_request=lora)
        generated = sum(len(o.outputs[0].token_ids) for o in outputs)
        return [clean_response(o.outputs[0].text, stop_strings) for o in outputs], generated


def generate_responses(config: GenerationConfig) -> Path:
    """Run stage 2 and return the path of `test_base_model.json`."""
    output_dir = Path(config.output_dir)
    test_file, adapter = Path(config.test_file or output_dir / "data" / "test.json"), run_adapter(output_dir, config.adapter)
    final_path = output_dir / RESPONSES_FILE
    models = ["base", "finetuned"] if config.models == "both" else [config.models]
    compared = parse_compare(config.compare)
    if "finetuned" in models and not config.merged:
        require_adapter(adapter)
    style: PromptStyle = load_style(adapter)
    records = validate_records(read_json(test_file), str(test_file))
    if config.limit > 0:
        records = records[:config.limit]
    base = resolve_model(base_reference(config.base_model, adapter))
    loads_base = "base" in models or not config.merged

    inputs = {"test_file": path_input(test_file)}
    if "finetuned" in models:
        inputs["finetuned"] = finetuned_input(config.merged, adapter)
    if loads_base:
        inputs["base_model"] = model_input(base)
    for model in compared:
        inputs[f"compare_{model.name}"] = compare_input(model, config.compare_base_url)
    settings = {k: v for k, v in asdict(config).items() if k in RESPONSE_SETTINGS}
    settings["prompt_style"] = style.name
    settings["compare"] = [m.name for m in compared]
    with output_lock(output_dir, "generate"):
        work = open_work(final_path, settings, inputs, overwrite=config.overwrite, restart=config.restart,
                         stage="stage 2", verb="generating")
        if work.progress is None:
            return final_path
        progress = work.progress
        columns = models + [m.name for m in compared]
        if not config.overwrite:
            _reuse_columns(work.finished, progress, final_path, len(records), columns)
        engine_cls = VllmGenerator if config.engine == "vllm" else TransformersGenerator
        timings: dict[str, dict] = {}
        if any((m, i) not in progress.done for m in models for i in range(len(records))):
            generator = engine_cls(base, adapter if "finetuned" in models else None, config.merged,
                                   config.trust_remote_code, models)
            timings = {m: _answer_all(generator, m, records, style, config, progress) for m in models}
        styles = {m: style.name for m in models}
        for model in compared:  # one model in memory at a time
            if all((model.name, i) in progress.done for i in range(len(records))):  # reused whole
                styles[model.name] = (work.finished or {}).get("prompt_styles", {}).get(model.name)
                continue
            generator, role, its_style = load_compare(
                model, style, engine_cls, base_url=config.compare_base_url, concurrency=config.concurrency,
                max_retries=4, timeout=120.0, trust_remote_code=config.trust_remote_code)
            styles[model.name] = its_style.name
            timings[model.name] = _answer_all(generator, model.name, records, its_style, config, progress, role)
            del generator

        fields = list(RESPONSE_FIELDS) + [m.name for m in compared]
        rows = [{**record, **{response_field(m): progress.done.get((m, i)) for m in fields}}
                for i, record in enumerate(records)]
        work.finish(rows, manifest(
            stage="part2_generate_test_responses",
            prompt_style=style.name,
            prompt_styles=styles,
            n_records=len(records),
            models=columns,
            compare={m.name: m.reference for m in compared},
            timings=timings,
        ))
    print(f"\n== stage 2 done: {len(rows)} records, models {', '.join(columns)}\nresponses: {final_path}")
    for model, timing in timings.items():
        print(f"  {model}: {timing['seconds']} s, {timing['generated_tokens_per_second']} generated tokens/s")
    return final_path


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
    if unchosen(finished.get("settings")) != unchosen(progress.settings):
        return
    rows = read_json(final_path)
    for column in columns:
        needs = COLUMN_INPUTS.get(column, ("test_file", f"compare_{column}"))
        if column not in finished.get("models", []) or any(
                finished["inputs"].get(name) != progress.inputs.get(name) for name in needs):
            continue
        reusable = [((column, i), rows[i].get(response_field(column))) for i in range(min(n_records, len(rows)))
                    if (column, i) not in progress.done]
        if reusable:
            progress.add(reusable)
            print(f"reusing the {column} model's {len(reusable)} responses from {final_path} "
                  "(same model, test split and settings)")


def _answer_all(generator, model: str, records: list[Record], style: PromptStyle,
                config: GenerationConfig, progress: ProgressLog, role: str | None = None) -> dict:
    """Answer every record not yet in the progress log; return this run's timing for `model`.

    Batches are fixed from all records' lengths, so a resumed run pads every prompt exactly as an
    uninterrupted one does and greedy decoding gives the same tokens; a batch only partly logged
    when the run was killed is generated again whole.
    """
    prompts = [generator.render(style, record) for record in records]
    lengths = generator.lengths(prompts)
    batches = length_sorted_batches(lengths, config.batch_size)
    todo = [batch for batch in batches if any((model, i) not in progress.done for i in batch)]
    started, new_tokens = time.perf_counter(), 0
    for number, batch in enumerate(todo, start=1):
        responses, generated = generator.generate(role or model, [prompts[i] for i in batch], config.max_new_tokens, style)
        progress.add([((model, i), r) for i, r in zip(batch, responses)])
        new_tokens += generated
        finished = sum(1 for (m, _) in progress.done if m == model)
        print(f"[{model}] batch {number}/{len(todo)}: {finished}/{len(records)} records", flush=True)
    seconds = time.perf_counter() - started
    return {
        "records_this_run": sum(len(batch) for batch in todo),
        "seconds": round(seconds, 2),
        "generated_tokens": new_tokens,
        "generated_tokens_per_second": round(new_tokens / seconds, 2) if todo and seconds else None,
    }
