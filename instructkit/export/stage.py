"""Stage 6: the run's adapter shipped as the files runtimes load (a merged transformers model, GGUF
files, an Ollama Modelfile, a model card, the leaderboard tools' answer files), with the proof
that each answers as the trained model did.

The costly part (merge, conversions, parity answers) is made from the adapter, the base, stage 2's
answers of the sampled records and a few settings, and is reused while they stand; the card, the
Modelfile and the leaderboard files are cheap and written again on every run, so they follow
stages 3-4 and the naming flags. All of it is made in `<run>/.stage6.partial/export/` (a killed
run resumes there) and swapped in as `<run>/export/` when complete.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from instructkit.data.parity import check_parity, stop_ids
from instructkit.data.prompts import PromptStyle, adds_bos, as_text, load_style
from instructkit.data.records import Record
from instructkit.data.responses import RESPONSES_FILE
from instructkit.errors import UserError
from instructkit.export.answer_parity import compare_answers, llama_cpp_runtime, transformers_runtime
from instructkit.export.card import evaluation_results, model_card
from instructkit.export.config import (
    EXPORT_DIR,
    MANIFEST_FILE,
    PARITY_FILE,
    STAGING_DIR,
    ExportConfig,
    export_name,
    gguf_types,
    safe_name,
    shipped_adapter,
)
from instructkit.export.gguf_files import convert, gguf_metadata, vocab_source
from instructkit.export.leaderboard import LeaderboardSources, read_leaderboard_sources, write_leaderboard_files
from instructkit.export.merge import save_merged
from instructkit.export.templates import (
    mismatch_error,
    modelfile_template,
    render_modelfile,
    runtime_messages,
    template_mismatches,
)
from instructkit.generate.generator import length_sorted_batches
from instructkit.models.references import ResolvedModel, base_reference, resolve_model, run_adapter, trained_prompts
from instructkit.runs.artifacts import manifest, output_lock, read_json, write_json_atomic, write_text_atomic
from instructkit.runs.fingerprints import model_input, path_input, same_input
from instructkit.runs.reuse import meta_path, why_redo
from instructkit.train.common import swap_in
from instructkit.train.config import SUMMARY_FILE

EXPORT_VERSION = 1  # bumped when what the export makes changes
RUN_FILE = "run.json"  # in the staging folder: what the partial export is made from
RECORD_KEYS = ("instruction", "input", "output", "messages", "category")  # a responses row less its answers
QUANTIZED_NOTE = ("stage 2 answered on the 4-bit base the QLoRA adapter was trained on; the shipped files carry the "
                  "adapter merged into the unquantized weights, so NF4's rounding is one source of differences")


@dataclass
class Stage2Sample:
    """The test records the shipped model's files answer, stage 2's answers to them, and the
    batches stage 2 answered them in (its batches are rebuilt, so that padding is not a difference)."""

    records: list[Record]
    answers: list[str]
    batches: list[list[Record]]  # stage 2's batches that hold a sampled record, each whole
    max_new_tokens: int
    precision: str
    quantized: bool  # stage 2 answered on the 4-bit base (QLoRA); the merge is unquantized
    fingerprint: dict  # its inputs entries: the answers, and how stage 2 made them
    tokenizer: object  # the base's, as training and stage 2 used it


def export(config: ExportConfig) -> Path:
    """Run stage 6 and return the export folder (`<output_dir>/export`)."""
    output_dir = Path(config.output_dir)
    adapter = shipped_adapter(config)
    base = resolve_model(base_reference("", adapter))
    style = load_style(adapter)
    if gguf_types(config) and style.template and '"""' in style.template.jinja:  # refused before the merge
        raise UserError(f'{adapter}: the run\'s chat template holds """, which the Modelfile cannot quote; '
                        "export with --gguf-type none")
    name = export_name(config)
    answers = read_leaderboard_sources(output_dir)  # checked before any costly step
    sample = _stage2_sample(output_dir, config, adapter, base, style, answers.test)
    made_from = {"settings": {"model": config.model, "gguf_types": gguf_types(config), "name": name,
                              "parity_records": config.parity_records, "export_version": EXPORT_VERSION},
                 "inputs": {"adapter": path_input(adapter), "base_model": model_input(base),
                            **(sample.fingerprint if sample else {})}}
    target, staging = output_dir / EXPORT_DIR, output_dir / STAGING_DIR
    with output_lock(output_dir, "export"):
        if (staging / EXPORT_DIR / MANIFEST_FILE).is_file():
            print(f"note: completing the swap-in of the export finished in {staging}")
            swap_in(output_dir, staging, (EXPORT_DIR,))
        _open_staging(staging, target, made_from, config)
        _export(config, staging / EXPORT_DIR, adapter, base, style, name, sample, made_from, answers)
        swap_in(output_dir, staging, (EXPORT_DIR,))
    _rebuild_report(output_dir)
    print(f"\n== stage 6 done: {target}")
    return target


def _open_staging(staging: Path, target: Path, made_from: dict, config: ExportConfig) -> None:
    """Resume an interrupted export of the same inputs and settings; else start from the finished
    export's costly files while they still stand (unless --overwrite); else from nothing."""
    saved = read_json(staging / RUN_FILE) if (staging / RUN_FILE).is_file() else None
    if (saved is not None and not config.restart and (staging / EXPORT_DIR).is_dir()
            and why_redo(saved, made_from["settings"], made_from["inputs"], "it began") is None):
        print(f"note: resuming the export begun in {staging}")
        return
    if saved is not None and (staging / EXPORT_DIR).is_dir():
        print(f"note: discarding the partial export in {staging}" + (" (--restart)" if config.restart else
                                                                        " (made from other inputs or settings)"))
    shutil.rmtree(staging, ignore_errors=True)
    write_json_atomic(staging / RUN_FILE, made_from)
    finished = target / MANIFEST_FILE
    if not finished.is_file():
        return
    reason = why_redo(read_json(finished), made_from["settings"], made_from["inputs"], "the export was made")
    if reason is None and not config.overwrite:
        print(f"reusing the merged model, GGUF files and parity answers in {target} (same adapter, stage 2 answers "
              "and settings; --overwrite makes them again); writing the card, Modelfile and leaderboard files again")
        # Hard links: export/ stays whole until the swap, and every file rewritten is a new file (atomic
        # writes). Linked beside, then renamed: a copy cut short is never taken for a staged export.
        seeding = staging / ".seeding"
        shutil.copytree(target, seeding, copy_function=os.link, ignore=shutil.ignore_patterns(MANIFEST_FILE))
        seeding.rename(staging / EXPORT_DIR)
    else:
        print(f"{reason or '--overwrite'}: exporting again")


def _export(config: ExportConfig, folder: Path, adapter: Path, base: ResolvedModel, style: PromptStyle, name: str,
            sample: Stage2Sample | None, made_from: dict, answers: LeaderboardSources) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    folder.mkdir(parents=True, exist_ok=True)
    merged = folder / "merged"
    if not (merged / "config.json").is_file():
        print(f"merging {adapter} into {base.reference} ...")
        partial = folder / ".merged.partial"
        shutil.rmtree(partial, ignore_errors=True)
        save_merged(base, adapter, style, partial)
        partial.replace(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    # Stage 1's saved prompts, rebuilt through the merged model's tokenizer; its stops hold training's
    check_parity(trained_prompts(adapter), {"stage 6 (the merged model's tokenizer)":
                                            lambda r: style.encode(style.render(r, tokenizer), tokenizer)},
                 stop_ids(GenerationConfig.from_pretrained(merged), style, tokenizer), tokenizer)
    # as text for every runtime (rendering them again changes nothing): models/tokens.py
    checks = [as_text(r, tokenizer) for r in (sample.records if sample else _test_records(Path(config.output_dir)))]

    def chat_render(template: str | None = None) -> Callable[[list, bool], str]:
        return lambda messages, generation: tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=generation)

    bos = tokenizer.bos_token if adds_bos(tokenizer) else ""
    ollama_template = modelfile_template(chat_render(), bos)
    if config.system_prompt and "{{ .System }}" not in ollama_template:
        raise UserError("--system-prompt: the run's chat template has no place for a system prompt")
    runtimes = {"the merged model's chat template (transformers)": lambda r: chat_render()(runtime_messages(style, r), True),
                "the Modelfile's TEMPLATE (Ollama)": lambda r: _ollama_prompt(ollama_template, style, r, bos)}
    _check_templates(style, checks, tokenizer, runtimes)
    files = {"merged/": "the merged model (safetensors, tokenizer with the chat template, generation_config.json "
                        "stopping where training did): transformers, vLLM, TGI, or push to the hub"}
    ggufs = {}
    for gguf_type in made_from["settings"]["gguf_types"]:
        path = folder / f"{name}-{gguf_type}.gguf"
        if not path.is_file():
            print(f"converting to {path.name} with llama.cpp's converter ...")
            convert(merged, path, gguf_type, vocab_source(base), name)
        ggufs[path] = gguf_metadata(path)
        _check_gguf(path, ggufs[path], tokenizer)
        gguf_runtimes = {f"{path.name}'s chat template (transformers)":
                         lambda r, t=ggufs[path]["chat_template"]: chat_render(t)(runtime_messages(style, r), True)}
        if importlib.util.find_spec("llama_cpp"):
            gguf_runtimes[f"{path.name}'s chat template (llama-cpp-python)"] = _llama_cpp_render(ggufs[path], style)
        _check_templates(style, checks, tokenizer, gguf_runtimes)
        runtimes |= gguf_runtimes
        files[path.name] = f"{gguf_type} GGUF: llama.cpp, LM Studio, Ollama (`Modelfile`)"
    template_checks = {"records": len(checks), "runtimes": list(runtimes)}

    parity = None
    if sample:
        if (folder / PARITY_FILE).is_file():
            parity = read_json(folder / PARITY_FILE)
        else:
            parity = {"records": len(sample.records), "max_new_tokens": sample.max_new_tokens,
                      "precision": sample.precision, "compared_with": f"{RESPONSES_FILE}, column {config.model}",
                      **({"note": QUANTIZED_NOTE} if sample.quantized else {}),
                      "template_checks": template_checks,
                      "artifacts": _answer_parity(folder, merged, ggufs, style, sample, base)}
            write_json_atomic(folder / PARITY_FILE, parity)
        for kept in folder.glob(".parity-*.json"):  # each artifact's result, kept for a resume until now
            kept.unlink()
        files[PARITY_FILE] = "the shipped files' answers against stage 2's (identical share, first differing token)"
    leaderboard = _write_cheap_files(config, folder, name, style, tokenizer, ollama_template, ggufs, files, parity,
                                     base, adapter, answers)
    write_json_atomic(folder / MANIFEST_FILE, manifest(
        stage="part6_export", **made_from, name=name, prompt_style=style.name,
        card={"license": config.license, "system_prompt": config.system_prompt},
        files={f: _size(folder / f) for f in files},
        gguf={p.name: {k: v for k, v in m.items() if k != "chat_template"} for p, m in ggufs.items()},
        template_checks=template_checks, parity=_parity_summary(parity), leaderboard=leaderboard))


def _write_cheap_files(config: ExportConfig, folder: Path, name: str, style: PromptStyle, tokenizer, ollama_template: str,
                       ggufs: dict[Path, dict], files: dict[str, str], parity: dict | None, base: ResolvedModel,
                       adapter: Path, answers: LeaderboardSources) -> dict:
    """The Modelfile, the leaderboard files and the model card, written on every run; what the
    leaderboard files hold."""
    output_dir = Path(config.output_dir)
    if ggufs:
        smallest = min(ggufs, key=lambda p: p.stat().st_size)
        write_text_atomic(folder / "Modelfile", _modelfile(smallest.name, ollama_template, style, tokenizer,
                                                           config.system_prompt, name))
        files["Modelfile"] = f"Ollama: `ollama create {name} -f Modelfile` (the run's template, stops and system prompt)"
    shutil.rmtree(folder / "leaderboard", ignore_errors=True)
    generators = {model: f"{output_dir.resolve().name}-{model}" for model in ("base", "finetuned", "preference")}
    generators[config.model] = name
    written = write_leaderboard_files(answers, folder / "leaderboard", generators)
    if written:
        files["leaderboard/"] = "AlpacaEval's model_outputs.json and FastChat's question, answer and reference files"
    files["README.md"] = "this card"
    results, notes = evaluation_results(output_dir, config.model)
    training = read_json(run_adapter(output_dir, "") / SUMMARY_FILE)
    preference = read_json(adapter / SUMMARY_FILE) if config.model == "preference" else None
    write_text_atomic(folder / "README.md", model_card(
        name=name, base=base, training=training, preference=preference, license_id=config.license,
        style_name=style.name, files=files, parity=parity, results=results, notes=notes))
    return written


def _check_templates(style: PromptStyle, records: list[Record], tokenizer, runtimes: dict[str, Callable]) -> None:
    if found := template_mismatches(style, records, tokenizer, runtimes):
        raise mismatch_error(found, f"{len(records)} test records")


def _stage2_sample(output_dir: Path, config: ExportConfig, adapter: Path, base: ResolvedModel,
                   style: PromptStyle, responses: tuple[list[dict], list[str]] | None) -> Stage2Sample | None:
    """The first --parity-records test records the shipped model answered in stage 2, with stage 2's
    batches and decoding; refused when those answers came from another adapter or base."""
    if not config.parity_records:
        return None
    from instructkit.models.loading import load_tokenizer

    path = output_dir / RESPONSES_FILE
    meta = read_json(meta_path(path)) if meta_path(path).is_file() else {}
    inputs, settings = meta.get("inputs") or {}, meta.get("settings") or {}
    key = "finetuned" if config.model == "finetuned" else f"compare_{config.model}"
    if not same_input(inputs.get(key), path_input(adapter)):
        raise UserError(f"{path}: its {config.model} answers were not made by {adapter} (trained again since, or "
                        "answered with --merged/--adapter); rerun stage 2, or pass --parity-records 0")
    if not same_input(inputs.get("base_model"), model_input(base)):
        raise UserError(f"{path}: stage 2 answered with another base model than {base.reference}; rerun stage 2, "
                        "or pass --parity-records 0")
    if settings.get("engine", "transformers") != "transformers":
        raise UserError(f"{path}: stage 2 answered with --engine {settings['engine']}; the export compares with "
                        "transformers' answers: rerun stage 2 without it, or pass --parity-records 0")
    rows, _ = responses  # read and checked once (read_leaderboard_sources); check() made sure it is there
    answered = [row for row in rows if row.get(config.model) is not None]  # null: too long, not asked
    if not answered:
        raise UserError(f"{path}: no {config.model} answers to compare with; rerun stage 2, or pass --parity-records 0")
    pool = [{k: v for k, v in row.items() if k in RECORD_KEYS} for row in answered]
    count = min(config.parity_records, len(pool))
    records, answers = pool[:count], [row[config.model] for row in answered[:count]]
    tokenizer = load_tokenizer(base)  # stage 2's batches, as its generator made them
    lengths = [len(ids) for ids in tokenizer([style.render(r, tokenizer) for r in pool])["input_ids"]]
    batches = [[pool[i] for i in batch] for batch in length_sorted_batches(lengths, settings.get("batch_size", 32))
               if min(batch) < count]
    def digest(value) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()

    quantized = bool(settings.get("base_quantization"))
    if quantized:
        print(f"note: {QUANTIZED_NOTE}")
    return Stage2Sample(records, answers, batches, settings.get("max_new_tokens", 128), meta.get("precision", "fp32"),
                        quantized,
                        # apart, so that a rerun says which changed: the answers, or how stage 2 made them
                        {"stage2_answers": {"reference": f"{RESPONSES_FILE}: the {config.model} answers to "
                                                         f"{len(records)} records", "answers_sha256": digest([records, answers])},
                         "stage2_decoding": {"reference": f"{RESPONSES_FILE}: stage 2's batches, longest answer and "
                                                          "precision", "batches_sha256": digest(batches),
                                             "max_new_tokens": settings.get("max_new_tokens", 128),
                                             "precision": meta.get("precision", "fp32")}},
                        tokenizer)


def _test_records(output_dir: Path) -> list[Record]:
    from instructkit.data.records import split_file, validate_records

    path = split_file(output_dir, "test", "")
    return validate_records(read_json(path), str(path))[:20] if path.is_file() else []


def _ollama_prompt(template: str, style: PromptStyle, record: Record, bos: str) -> str | None:
    """Ollama's rendering of one user turn (None for a conversation's later turns: its turn template
    is not checked there)."""
    messages = runtime_messages(style, record)
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    if len(messages) > (2 if system else 1):
        return None
    return bos + render_modelfile(template, system, messages[-1]["content"])


def _llama_cpp_render(metadata: dict, style: PromptStyle) -> Callable[[Record], str]:
    """llama-cpp-python's rendering of the GGUF's template, with the GGUF's own BOS and EOS text."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=metadata["chat_template"], eos_token=metadata["eos_token"],
                                    bos_token=metadata["bos_token"] or "")
    return lambda record: formatter(messages=runtime_messages(style, record)).prompt


def _check_gguf(path: Path, metadata: dict, tokenizer) -> None:
    """The GGUF says what training did: the merged model's chat template, the EOS answers ended
    with, and the BOS a prompt starts with."""
    if metadata["chat_template"] != tokenizer.chat_template:
        raise UserError(f"{path}: the converter wrote another chat template than the merged model's; the runtime "
                        f"would prompt it differently than training did.\nmerged: {tokenizer.chat_template!r}\n"
                        f"GGUF: {metadata['chat_template']!r}")
    if metadata["eos_token_id"] != tokenizer.eos_token_id:
        raise UserError(f"{path}: EOS is {metadata['eos_token']!r} (id {metadata['eos_token_id']}), but training ended "
                        f"answers with {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}): a runtime would not stop")
    if bool(metadata["add_bos_token"]) != adds_bos(tokenizer) or (
            adds_bos(tokenizer) and metadata["bos_token_id"] != tokenizer.bos_token_id):
        raise UserError(f"{path}: add_bos_token {metadata['add_bos_token']} (BOS id {metadata['bos_token_id']}), but "
                        f"training's prompts {'start with' if adds_bos(tokenizer) else 'have no'} BOS "
                        f"(id {tokenizer.bos_token_id})")


def _answer_parity(folder: Path, merged: Path, ggufs: dict[Path, dict], style: PromptStyle, sample: Stage2Sample,
                   base: ResolvedModel) -> list[dict]:
    """Each artifact's answers against stage 2's, one model in memory at a time; each result is
    kept in the staging folder, so a rerun after a crash does not answer again."""
    import torch

    from instructkit.generate.generator import TransformersGenerator
    from instructkit.models.gguf import load_gguf_model, load_gguf_tokenizer, transformers_gguf_tokenizer

    dtype = torch.bfloat16 if sample.precision == "bf16" else torch.float32
    trained = sample.tokenizer  # the tokenizer training and stage 2 used
    trained_ids = [style.encode(style.render(r, trained), trained) for r in sample.records]
    max_new = sample.max_new_tokens

    def merged_runtime():
        generator = TransformersGenerator(ResolvedModel(str(merged), str(merged), "local"), None, "", False, ["base"], dtype)
        return transformers_runtime(generator, style, max_new, sample.batches)

    def gguf_runtime(path: Path):
        model = load_gguf_model(path, dtype)
        # The tokenizer transformers builds from the GGUF; for the models whose tokenizer came from a
        # GGUF (the embedded ones), the reader training used (models/gguf.py)
        tokenizer = (load_gguf_tokenizer(path) if base.source in ("embedded", "gguf")
                     else transformers_gguf_tokenizer(path))
        return transformers_runtime(TransformersGenerator.loaded(model, tokenizer), style, max_new, sample.batches)

    planned: list[tuple[str, Callable]] = [("merged/ (transformers)", merged_runtime)]
    for path in ggufs:
        planned.append((f"{path.name} (transformers)", lambda p=path: gguf_runtime(p)))
        if importlib.util.find_spec("llama_cpp"):
            planned.append((f"{path.name} (llama.cpp)", lambda p=path: llama_cpp_runtime(p, style, trained, max_new)))
    results = []
    for label, make in planned:
        kept = folder / f".parity-{safe_name(label)}.json"
        if kept.is_file():
            results.append(read_json(kept))
            continue
        print(f"answering {len(sample.records)} test records with {label} ...")
        result = compare_answers(label, make(), sample.records, sample.answers, trained_ids, trained)
        print(f"  {result['identical']}/{result['records']} answers identical to stage 2's, "
              f"{result['prompt_ids_identical']}/{result['records']} prompts token for token")
        write_json_atomic(kept, result)
        results.append(result)
    return results


def _modelfile(gguf: str, template: str, style: PromptStyle, tokenizer, system: str, name: str) -> str:
    """Ollama's Modelfile: the file, the run's template, every stop, greedy like stage 2."""
    if '"""' in template or '"""' in system:
        raise UserError('the template or --system-prompt holds """, which a Modelfile cannot quote')
    stops = list(dict.fromkeys([*style.stop_strings, style.stop_token(tokenizer)]))
    lines = [f"# {name}: ollama create {name} -f Modelfile && ollama run {name}", f"FROM ./{gguf}",
             f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    lines += ["# greedy and unpenalised, as stage 2 answered; raise the temperature for varied answers",
              "PARAMETER temperature 0", "PARAMETER repeat_penalty 1"]
    return "\n".join(lines) + "\n"


def _parity_summary(parity: dict | None) -> dict | None:
    return None if parity is None else {a["artifact"]: f"{a['identical']}/{a['records']}" for a in parity["artifacts"]}


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _rebuild_report(output_dir: Path) -> None:
    """The run's report gains the export section, if stage 4 made one."""
    from instructkit.report.build import REPORT_FILE, build_report

    if (output_dir / REPORT_FILE).is_file():
        print(f"report: {build_report(output_dir)}")
