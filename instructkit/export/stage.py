"""Stage 6: the run's adapter shipped as the files runtimes load (a merged transformers model, GGUF
files, an Ollama Modelfile, a model card, the leaderboard tools' answer files), with the proof
that each answers as the trained model did. Made in `<run>/.stage6.partial/` (a rerun resumes it)
and swapped in as `<run>/export/` when complete."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from instructkit.data.parity import check_parity
from instructkit.data.prompts import PromptStyle, adds_bos, load_style
from instructkit.data.records import Record
from instructkit.data.responses import RESPONSES_FILE, read_responses
from instructkit.errors import UserError
from instructkit.export.answer_parity import compare_answers, llama_cpp_runtime, transformers_runtime
from instructkit.export.card import evaluation_results, model_card
from instructkit.export.config import (
    EXPORT_DIR,
    MANIFEST_FILE,
    PARITY_FILE,
    STAGING_DIR,
    ExportConfig,
    gguf_types,
    shipped_adapter,
)
from instructkit.export.gguf_files import convert, gguf_metadata, vocab_source
from instructkit.export.leaderboard import write_leaderboard_files
from instructkit.export.merge import save_merged
from instructkit.export.templates import (
    mismatch_error,
    modelfile_template,
    render_modelfile,
    runtime_messages,
    template_mismatches,
)
from instructkit.models.references import ResolvedModel, base_reference, resolve_model, run_adapter, trained_prompts
from instructkit.runs.artifacts import manifest, output_lock, read_json, write_json_atomic, write_text_atomic
from instructkit.runs.fingerprints import model_input, path_input, same_input
from instructkit.runs.reuse import meta_path, why_redo
from instructkit.train.common import swap_in
from instructkit.train.config import SUMMARY_FILE

EXPORT_VERSION = 1  # bumped when what the export writes changes
UNSAFE = re.compile(r"[^\w.-]+")  # in a file name
RUN_FILE = "run.json"  # in the staging folder: what the partial export is made from


def export(config: ExportConfig) -> Path:
    """Run stage 6 and return the export folder (`<output_dir>/export`)."""
    output_dir = Path(config.output_dir)
    adapter = shipped_adapter(config)
    base = resolve_model(base_reference("", adapter))
    name = config.name or f"{output_dir.resolve().name}-{config.model}"
    responses = output_dir / RESPONSES_FILE
    settings = {"model": config.model, "gguf_types": gguf_types(config), "name": name, "system_prompt": config.system_prompt,
                "license": config.license, "parity_records": config.parity_records, "export_version": EXPORT_VERSION}
    inputs = {"adapter": path_input(adapter), "base_model": model_input(base)}
    if responses.is_file():
        inputs["responses"] = path_input(responses)
    target, staging = output_dir / EXPORT_DIR, output_dir / STAGING_DIR
    with output_lock(output_dir, "export"):
        if (target / MANIFEST_FILE).is_file() and not config.overwrite:
            reason = why_redo(read_json(target / MANIFEST_FILE), settings, inputs, "the export was made")
            if reason is None:
                print(f"stage 6 already finished: {target / MANIFEST_FILE} (same adapter, answers and settings; "
                      "--overwrite exports again)")
                return target
            print(f"{reason}: exporting again")
        _open_staging(staging, {"settings": settings, "inputs": inputs}, config.restart)
        _export(config, staging / EXPORT_DIR, adapter, base, name, settings, inputs)
        swap_in(output_dir, staging, (EXPORT_DIR,))
    _rebuild_report(output_dir)
    print(f"\n== stage 6 done: {target}")
    return target


def _open_staging(staging: Path, record: dict, restart: bool) -> None:
    """Keep what an interrupted export of the same inputs and settings finished; else start afresh."""
    saved = read_json(staging / RUN_FILE) if (staging / RUN_FILE).is_file() else None
    if saved is not None and not restart and why_redo(saved, record["settings"], record["inputs"], "it began") is None:
        print(f"note: resuming the export begun in {staging}")
        return
    if saved is not None:
        print(f"note: discarding the partial export in {staging}" + (" (--restart)" if restart else " (made from other inputs or settings)"))
    shutil.rmtree(staging, ignore_errors=True)
    write_json_atomic(staging / RUN_FILE, record)


def _export(config: ExportConfig, folder: Path, adapter: Path, base: ResolvedModel, name: str, settings: dict,
            inputs: dict) -> None:
    from transformers import AutoTokenizer

    style = load_style(adapter)
    merged = folder / "merged"
    if not (merged / "config.json").is_file():
        print(f"merging {adapter} into {base.reference} ...")
        partial = folder / ".merged.partial"
        shutil.rmtree(partial, ignore_errors=True)
        save_merged(base, adapter, style, partial)
        partial.replace(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    records, stored, stage2 = _stage2_answers(Path(config.output_dir), config, adapter)
    checks = records or _test_records(Path(config.output_dir))

    def chat_render(template: str | None = None) -> Callable[[list, bool], str]:
        return lambda messages, generation: tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=generation)

    bos = tokenizer.bos_token if adds_bos(tokenizer) else ""
    ollama_template = modelfile_template(chat_render(), bos)
    runtimes = {"the merged model's chat template (transformers)": lambda r: chat_render()(runtime_messages(style, r), True),
                "the Modelfile's TEMPLATE (Ollama)": lambda r: _ollama_prompt(ollama_template, style, r, bos)}
    files = {"merged/": "the merged model (safetensors, tokenizer with the chat template, generation_config.json "
                        "stopping where training did): transformers, vLLM, TGI, or push to the hub"}
    ggufs = {}
    for gguf_type in settings["gguf_types"]:
        path = folder / f"{name}-{gguf_type}.gguf"
        if not path.is_file():
            print(f"converting to {path.name} with llama.cpp's converter ...")
            convert(merged, path, gguf_type, vocab_source(base))
        ggufs[path] = gguf_metadata(path)
        _check_gguf(path, ggufs[path], tokenizer)
        runtimes[f"{path.name}'s chat template (transformers)"] = (
            lambda r, t=ggufs[path]["chat_template"]: chat_render(t)(runtime_messages(style, r), True))
        if importlib.util.find_spec("llama_cpp"):
            runtimes[f"{path.name}'s chat template (llama-cpp-python)"] = _llama_cpp_render(ggufs[path], tokenizer, style)
        files[path.name] = f"{gguf_type} GGUF: llama.cpp, LM Studio, Ollama (`Modelfile`)"
    if found := template_mismatches(style, checks, tokenizer, runtimes):
        raise mismatch_error(found, f"{len(checks)} test records")
    template_checks = {"records": len(checks), "runtimes": list(runtimes)}

    parity = None
    if records:
        parity = {"records": len(records), "max_new_tokens": stage2["max_new_tokens"], "precision": stage2["precision"],
                  "compared_with": f"{RESPONSES_FILE}, column {config.model}", "template_checks": template_checks,
                  "artifacts": _answer_parity(folder, merged, ggufs, style, records, stored, stage2, adapter, tokenizer)}
        write_json_atomic(folder / PARITY_FILE, parity)
        for kept in folder.glob(".parity-*.json"):  # each artifact's result, kept for a resume until now
            kept.unlink()
        files[PARITY_FILE] = "the shipped files' answers against stage 2's (identical share, first differing token)"
    smallest = min(ggufs, key=lambda p: p.stat().st_size) if ggufs else None
    if smallest:
        write_text_atomic(folder / "Modelfile", _modelfile(smallest.name, ollama_template, style, tokenizer, config.system_prompt, name))
        files["Modelfile"] = f"Ollama: `ollama create {name} -f Modelfile` (the run's template, stops and system prompt)"
    generators = {model: f"{Path(config.output_dir).resolve().name}-{model}" for model in ("base", "finetuned", "preference")}
    generators[config.model] = name
    leaderboard = write_leaderboard_files(Path(config.output_dir), folder / "leaderboard", generators)
    if leaderboard:
        files["leaderboard/"] = "AlpacaEval's model_outputs.json and FastChat's question/model_answer files"
    files["README.md"] = "this card"
    results, notes = evaluation_results(Path(config.output_dir), config.model)
    training = read_json(run_adapter(Path(config.output_dir), "") / SUMMARY_FILE)
    preference = read_json(adapter / SUMMARY_FILE) if config.model == "preference" else None
    write_text_atomic(folder / "README.md", model_card(
        name=name, base_model=base.reference, training=training, preference=preference, license=config.license,
        style_name=style.name, files=files, parity=parity, results=results, notes=notes))
    write_json_atomic(folder / MANIFEST_FILE, manifest(
        stage="part6_export", settings=settings, inputs=inputs, name=name, prompt_style=style.name,
        files={f: _size(folder / f) for f in files}, gguf={p.name: {k: v for k, v in m.items() if k != "chat_template"}
                                                           for p, m in ggufs.items()},
        template_checks=template_checks, parity=_parity_summary(parity), leaderboard=leaderboard))


def _stage2_answers(output_dir: Path, config: ExportConfig, adapter: Path) -> tuple[list[Record], list[str], dict]:
    """The first --parity-records test records the shipped model answered in stage 2, its answers,
    and how stage 2 decoded them; refused when those answers came from another adapter."""
    if not config.parity_records:
        return [], [], {}
    path = output_dir / RESPONSES_FILE
    meta = read_json(meta_path(path)) if meta_path(path).is_file() else {}
    key = "finetuned" if config.model == "finetuned" else f"compare_{config.model}"
    if not same_input((meta.get("inputs") or {}).get(key), path_input(adapter)):
        raise UserError(f"{path}: its {config.model} answers were not made by {adapter} (trained again since, or "
                        "answered with --merged/--adapter); rerun stage 2, or pass --parity-records 0")
    records, _ = read_responses(path)
    answered = [r for r in records if r.get(config.model) is not None][:config.parity_records]
    settings = meta.get("settings") or {}
    return ([{k: v for k, v in r.items() if k in ("instruction", "input", "output", "messages", "system", "category")}
             for r in answered], [r[config.model] for r in answered],
            {"max_new_tokens": settings.get("max_new_tokens", 128), "precision": meta.get("precision", "fp32"),
             "quantization": settings.get("base_quantization")})


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


def _llama_cpp_render(metadata: dict, tokenizer, style: PromptStyle) -> Callable[[Record], str]:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=metadata["chat_template"], eos_token=metadata["eos_token"],
                                    bos_token=tokenizer.bos_token or "")
    return lambda record: formatter(messages=runtime_messages(style, record)).prompt


def _check_gguf(path: Path, metadata: dict, tokenizer) -> None:
    """The GGUF says what training did: the merged model's chat template, and the EOS answers ended with."""
    if metadata["chat_template"] != tokenizer.chat_template:
        raise UserError(f"{path}: the converter wrote another chat template than the merged model's; the runtime "
                        f"would prompt it differently than training did.\nmerged: {tokenizer.chat_template!r}\n"
                        f"GGUF: {metadata['chat_template']!r}")
    if metadata["eos_token_id"] != tokenizer.eos_token_id:
        raise UserError(f"{path}: EOS is {metadata['eos_token']!r} (id {metadata['eos_token_id']}), but training ended "
                        f"answers with {tokenizer.eos_token!r} (id {tokenizer.eos_token_id}): a runtime would not stop")


def _answer_parity(folder: Path, merged: Path, ggufs: dict[Path, dict], style: PromptStyle, records: list[Record],
                   stored: list[str], stage2: dict, adapter: Path, tokenizer) -> list[dict]:
    """Each artifact's answers against stage 2's, one model in memory at a time; each result is
    kept in the staging folder, so a rerun after a crash does not answer again."""
    import torch
    from transformers import AutoModelForCausalLM

    from instructkit.generate.generator import TransformersGenerator
    from instructkit.models.gguf import load_gguf_tokenizer

    dtype = torch.bfloat16 if stage2["precision"] == "bf16" else torch.float32
    trained_ids = [style.encode(style.render(r, tokenizer), tokenizer) for r in records]
    max_new = stage2["max_new_tokens"]

    def merged_runtime():
        generator = TransformersGenerator(ResolvedModel(str(merged), str(merged), "local"), None, "", False, ["base"], dtype)
        # stage 1's saved prompts and stop token, through the merged model's own tokenizer (data/parity.py)
        check_parity(trained_prompts(adapter), {"stage 6 (merged model)": lambda r: generator.prompt_ids(style, r)},
                     generator.stop_ids(style), generator.tokenizer)
        return transformers_runtime(generator, style, max_new)

    def gguf_runtime(path: Path):
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        return transformers_runtime(TransformersGenerator.loaded(model, load_gguf_tokenizer(path)), style, max_new)

    planned: list[tuple[str, Callable]] = [("merged/ (transformers)", merged_runtime)]
    for path in ggufs:
        planned.append((f"{path.name} (transformers)", lambda p=path: gguf_runtime(p)))
        if importlib.util.find_spec("llama_cpp"):
            planned.append((f"{path.name} (llama.cpp)",
                            lambda p=path: llama_cpp_runtime(p, style, tokenizer, max_new, 4096)))
    results = []
    for label, make in planned:
        kept = folder / f".parity-{UNSAFE.sub('-', label)}.json"
        if kept.is_file():
            results.append(read_json(kept))
            continue
        print(f"answering {len(records)} test records with {label} ...")
        result = compare_answers(label, make(), records, stored, trained_ids, tokenizer)
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
