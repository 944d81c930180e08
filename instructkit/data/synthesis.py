"""Stage 0: make instruction data with a stronger model (Self-Instruct, Magpie), improve it
(reflection), and clean it (near duplicates, contamination with an evaluation set).

Every method ends in the same curation and writes `generated/instruction-data.json` (Alpaca records
stage 1 reads as they are) with a manifest that counts what each filter dropped. Requests go out in
rounds; each round's replies are logged before they are used, so a killed run replays them and
continues exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from instructkit.data.records import Record, load_records, read_raw_records, validate_records
from instructkit.data.similarity import RougeLFilter, contaminated, near_duplicates
from instructkit.data.synthesis_config import DEFAULT_SEEDS, OUTPUT_FILE, SynthesisConfig, check, parse_generator
from instructkit.data.synthesis_prompts import (
    INSTANCE_PREFILL,
    SeedTask,
    classification_prompt,
    instance_prompt,
    new_tasks_prompt,
    read_instance,
    read_new_tasks,
    read_reflection,
    read_yes_no,
    reflect_instruction_prompt,
    reflect_response_prompt,
)
from instructkit.errors import UserError, problems_error
from instructkit.models.backends import Conversation, HFBackend, OpenAIBackend, Reply, user_header, user_turn
from instructkit.models.loading import load_tokenizer
from instructkit.models.references import resolve_model
from instructkit.runs.artifacts import manifest, output_lock, write_json_atomic
from instructkit.runs.fingerprints import path_input
from instructkit.runs.reuse import ProgressLog, open_work

DEFAULT_TEMPERATURE = {"self-instruct": 0.7, "magpie": 1.0, "reflect": 0.0, "curate": 0.0, "pairs-rewrite": 0.0,
                       "pairs-sample": 0.8}
# Tasks a text model cannot do (Self-Instruct's list, plus a few of the same kind).
BLOCKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "photo", "photos", "file", "files",
             "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram", "sketch")
# Settings that do not change what is generated, only how fast or where.
NOT_RESULT_SETTINGS = ("output_dir", "overwrite", "restart", "dry_run", "concurrency", "max_retries", "request_timeout",
                       "keep_dropped")
_BLOCKED = re.compile(r"\b(?:" + "|".join(map(re.escape, BLOCKLIST)) + r")\b", re.IGNORECASE)
STALL_ROUNDS = 5  # rounds in a row that keep no new instruction before generation gives up


# --- inputs ---------------------------------------------------------------------------------------

def load_seed_tasks(path: str) -> list[SeedTask]:
    """Seed tasks in Self-Instruct's format, or the records of any Alpaca file (classification not known).
    Problems are reported as stage 1 reports them: file, record, field; all at once."""
    if not Path(path).is_file():  # a hub dataset, or a clear "no such file"
        return [SeedTask(r["instruction"], r["input"], r["output"], None) for r in load_records(path)]
    raw = read_raw_records(Path(path))
    if not any(isinstance(item, dict) and ("instances" in item or "is_classification" in item) for item in raw):
        return [SeedTask(r["instruction"], r["input"], r["output"], None) for r in validate_records(raw, path)]
    problems, flattened = [], []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            flattened.append(item)
            continue
        instances = item.get("instances")
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            problems.append(f"{path}: record {index}: field 'instances' must be a non-empty list of "
                            "objects with 'input' and 'output'")
            instances = [{"input": "", "output": "-"}]  # so the record's other fields are still checked
        if not isinstance(item.get("is_classification", False), bool):
            problems.append(f"{path}: record {index}: field 'is_classification' must be true or false")
        flattened.append({"instruction": item.get("instruction"), **instances[0]})
    try:
        records = validate_records(flattened, path)
    except UserError as exc:
        problems += str(exc).splitlines()
    if problems:
        raise problems_error(problems)
    return [SeedTask(r["instruction"], r["input"], r["output"], bool(item.get("is_classification", False)))
            for r, item in zip(records, raw)]


def load_generator(config: SynthesisConfig) -> HFBackend | OpenAIBackend:
    kind, model = parse_generator(config.generator)
    if kind == "hf":
        if config.base_url:
            raise UserError("--base-url is for openai: generators (any OpenAI-compatible server)")
        return HFBackend(model, config.trust_remote_code)
    return OpenAIBackend(model, config.base_url, concurrency=config.concurrency, seed=config.seed,
                         max_retries=config.max_retries, timeout=config.request_timeout, role="generator",
                         flag="--generator")


# --- requests, logged by round --------------------------------------------------------------------

class Rounds:
    """Sends one round of requests at a time, logging the replies before they are used: a resumed
    run gets the logged replies back and so makes the same decisions, in the same order."""

    def __init__(self, backend, progress: ProgressLog, config: SynthesisConfig):
        self.backend, self.progress, self.config = backend, progress, config
        self.sent = 0  # requests this run's work stands on, replayed ones included

    def _seed(self, key: tuple) -> int:
        return int.from_bytes(hashlib.sha256(json.dumps([self.config.seed, *key]).encode()).digest()[:4], "big")

    def _replayed(self, key: tuple, count: int, asked: object) -> tuple[str, dict | None]:
        """The fingerprint of what a round asks, and its logged entry if it was asked before."""
        digest = hashlib.sha256(json.dumps(asked, ensure_ascii=False).encode()).hexdigest()
        self.sent += count
        entry = self.progress.done.get(key)
        if entry is not None and entry["prompts_sha256"] != digest:
            raise UserError(f"{self.progress.path}: the logged round {list(key)} was asked with other prompts; "
                            "pass --restart to discard the partial results")
        return digest, entry

    def logged_values(self, key: tuple, count: int, asked: object, ask: Callable[[int], list]) -> list:
        """As `logged`, for work whose results are JSON values rather than replies (a local judge's
        expected scores)."""
        digest, entry = self._replayed(key, count, asked)
        if entry is not None:
            return entry["values"]
        values = ask(self._seed(key))
        self.progress.add([(key, {"prompts_sha256": digest, "values": values})])
        return values

    def logged(self, key: tuple, count: int, asked: object, ask: Callable[[int], list[Reply]]) -> list[Reply]:
        """`count` requests, asked as `asked` says (their prompts, fingerprinted to check a replay),
        by `ask(seed)`; `count` 0 for work that is no request to the generator (a local model's answers)."""
        digest, entry = self._replayed(key, count, asked)
        if entry is not None:
            return [Reply.from_json(r) for r in entry["replies"]]
        replies = ask(self._seed(key))
        self.require_answers(key, [r.error for r in replies if r.failed], len(replies))
        self.progress.add([(key, {"prompts_sha256": digest, "replies": [r.to_json() for r in replies]})])
        return replies

    def require_answers(self, key: tuple, errors: list[str], asked: int) -> None:
        """Stop the run when requests of a round got no answer (`errors`): later rounds are asked
        from this one's replies, so it must be whole before they are."""
        if errors:
            raise UserError(f"{len(errors)} of {asked} requests of round {list(key)} got no answer ({errors[0]}); "
                            f"the finished rounds are kept in {self.progress.path}: rerun the same command to continue")

    def chat(self, key: tuple, prompts: list[str], temperature: float = 0.0, prefill: str = "", system: str = "",
             max_new_tokens: int | None = None) -> list[Reply]:
        """A local model's reply starts after `prefill` (its answer is steered into the format);
        chat APIs take no prefill and answer the format they are asked for."""
        conversations: list[Conversation] = [user_turn(p, system) for p in prompts]
        return self.logged(key, len(prompts), [conversations, prefill], lambda seed: self.backend.chat(
            conversations, max_new_tokens or self.config.max_new_tokens, prefill=prefill, temperature=temperature,
            top_p=self.config.top_p, seed=seed))

    def complete(self, key: tuple, texts: list[str], temperature: float) -> list[Reply]:
        return self.logged(key, len(texts), texts, lambda seed: self.backend.complete(
            texts, self.config.max_new_tokens, temperature=temperature, top_p=self.config.top_p, seed=seed))


class Tally:
    """Counts of what was dropped and why (the dropped items themselves for --keep-dropped), and of
    other outcomes worth knowing (a reflection kept as it was, an unclear classification)."""

    def __init__(self):
        self.counts: Counter[str] = Counter()
        self.dropped: list[dict] = []
        self.outcomes: Counter[str] = Counter()
        self.instruction_phase: dict[str, int] = {}  # requests sent for new instructions, and how many were kept

    def drop(self, reason: str, item: dict) -> None:
        self.counts[reason] += 1
        self.dropped.append({**item, "reason": reason})


def instruction_problem(text: str, config: SynthesisConfig) -> str | None:
    """Why a new instruction is unusable (Self-Instruct's rules), or None."""
    words = text.split()
    if len(words) <= config.min_words:
        return "instruction too short"
    if len(words) > config.max_words:
        return "instruction too long"
    if _BLOCKED.search(text):
        return "needs what a text model cannot do (blocklist)"
    if not text[0].isascii():
        return "starts with a non-ASCII character"
    if not text[0].isalnum():
        return "starts with punctuation"
    return None


def _new_instructions(rounds: Rounds, config: SynthesisConfig, tally: Tally, novelty: RougeLFilter,
                      ask_round: Callable[[int, list[str]], list[list[str]]], budget: int) -> list[str]:
    """Rounds of candidates (one list per request) until enough pass the filters, the request budget
    is spent, or STALL_ROUNDS rounds in a row keep nothing. A round is asked knowing what earlier
    rounds kept (Self-Instruct shows some of them as examples)."""
    kept: list[str] = []
    stalled = 0
    with tqdm(total=config.num_instructions, desc="instructions", unit="instr") as bar:
        round_number = 0
        while len(kept) < config.num_instructions and rounds.sent + config.batch_size <= budget and stalled < STALL_ROUNDS:
            candidates = []
            for request in ask_round(round_number, kept):
                if not request:
                    tally.drop("reply unreadable or empty", {"round": round_number})
                candidates += request
            usable = []
            for text in candidates:
                problem = instruction_problem(text, config)
                if problem:
                    tally.drop(problem, {"instruction": text})
                else:
                    usable.append(text)
            before = len(kept)
            for text, similar in zip(usable, novelty.add(usable)):
                if similar is None:
                    kept.append(text)
                else:
                    tally.drop("too similar to a kept instruction (ROUGE-L)",
                               {"instruction": text, "similar_to": novelty.texts[similar[0]], "similarity": similar[1]})
            stalled = stalled + 1 if len(kept) == before else 0
            bar.update(min(len(kept), config.num_instructions) - bar.n)
            round_number += 1
    tally.instruction_phase = {"requests": rounds.sent, "instructions_kept": min(len(kept), config.num_instructions)}
    if len(kept) < config.num_instructions:
        why = "the request budget (--max-requests) ran out" if stalled < STALL_ROUNDS else f"{STALL_ROUNDS} rounds in a row kept nothing"
        print(f"note: {len(kept)} of {config.num_instructions} instructions: {why}")
    return kept[:config.num_instructions]


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def replies_to(rounds: Rounds, step: str, prompts: list[str], desc: str, prefills: list[str] | None = None) -> list[Reply]:
    """Greedy replies to `prompts`, a round at a time; prompts with different prefills go in separate rounds."""
    prefills = prefills or [""] * len(prompts)
    replies: dict[int, Reply] = {}
    for prefill in sorted(set(prefills)):
        indices = [i for i, p in enumerate(prefills) if p == prefill]
        for n, chunk in enumerate(tqdm(chunks(indices, rounds.config.batch_size), desc=desc, unit="round")):
            key = (step, prefill, n) if prefill else (step, n)
            replies.update(zip(chunk, rounds.chat(key, [prompts[i] for i in chunk], prefill=prefill)))
    return [replies[i] for i in range(len(prompts))]


def _new_tasks_prompt(rng: random.Random, seeds: list[SeedTask], kept: list[str], config: SynthesisConfig) -> str:
    """Examples drawn from the seeds and, once there are some, from the kept new instructions."""
    from_generated = rng.sample(kept, min(config.generated_examples, len(kept)))
    from_seeds = rng.sample(seeds, min(config.examples_per_prompt - len(from_generated), len(seeds)))
    examples = [s.instruction for s in from_seeds] + from_generated
    rng.shuffle(examples)
    return new_tasks_prompt(examples)


def self_instruct(rounds: Rounds, config: SynthesisConfig, seeds: list[SeedTask], tally: Tally) -> list[Record]:
    rng = random.Random(config.seed)
    novelty = RougeLFilter(config.rouge_threshold)
    novelty.add([s.instruction for s in seeds])

    def ask_round(round_number: int, kept: list[str]) -> list[list[str]]:
        prompts = [_new_tasks_prompt(rng, seeds, kept, config) for _ in range(config.batch_size)]
        replies = rounds.chat(("instructions", round_number), prompts, sampling_temperature(config))
        return [read_new_tasks(r.text, r.truncated) if r.text else [] for r in replies]

    budget = config.max_requests - 2 * config.num_instructions
    generated = _new_instructions(rounds, config, tally, novelty, ask_round, budget)

    # Is each one a classification task? (Few-shot examples from seeds whose answer is known.)
    known = [s for s in seeds if s.is_classification is not None] or load_seed_tasks(DEFAULT_SEEDS)
    shots = random.Random(config.seed).sample(known, min(6, len(known)))
    verdicts = replies_to(rounds, "classification", [classification_prompt(i, shots) for i in generated], "classification")
    classification = []
    for verdict in verdicts:
        answer = read_yes_no(verdict.text) if verdict.text else None
        if answer is None:
            tally.outcomes["classification unclear (taken as not classification)"] += 1
        classification.append(bool(answer))

    # One instance each, input-first or output-first, shown a seed of the same kind as the example.
    def example(is_classification: bool) -> SeedTask:
        same = [s for s in known if s.is_classification == is_classification] or known
        return same[0]
    prompts = [instance_prompt(i, example(c), c) for i, c in zip(generated, classification)]
    prefills = [INSTANCE_PREFILL[c] for c in classification]
    records = []
    for instruction, is_classification, reply in zip(generated, classification,
                                                    replies_to(rounds, "instances", prompts, "instances", prefills)):
        item = {"instruction": instruction}
        if reply.text is None:
            tally.drop("request refused", {**item, "error": reply.error})
            continue
        if reply.truncated:
            tally.drop("instance cut off by --max-new-tokens", {**item, "reply": reply.text})
            continue
        instance = read_instance(reply.text, is_classification)
        if instance is None:
            tally.drop("instance unreadable", {**item, "reply": reply.text})
        elif not instance[1]:
            tally.drop("instance has an empty output", {**item, "reply": reply.text})
        elif instance[0].strip() == instance[1].strip():
            tally.drop("instance output repeats its input", {**item, "reply": reply.text})
        else:
            records.append({"instruction": instruction, "input": instance[0], "output": instance[1]})
    return records


def sampling_temperature(config: SynthesisConfig) -> float:
    return DEFAULT_TEMPERATURE[config.method] if config.temperature is None else config.temperature


def magpie(rounds: Rounds, config: SynthesisConfig, tally: Tally) -> list[Record]:
    """Magpie: the chat template up to the user's turn, and nothing else, makes an instruct model
    write a user's instruction; the same model then answers it, greedily."""
    header = rounds.backend.user_header()
    novelty = RougeLFilter(config.rouge_threshold)

    def ask_round(round_number: int, kept: list[str]) -> list[list[str]]:
        replies = rounds.complete(("instructions", round_number), [header] * config.batch_size, sampling_temperature(config))
        candidates = []
        for reply in replies:
            if reply.truncated:
                tally.drop("instruction cut off by --max-new-tokens", {"instruction": reply.text})
                candidates.append([])
            else:
                candidates.append([reply.text] if reply.text else [])
        return candidates

    instructions = _new_instructions(rounds, config, tally, novelty, ask_round, config.max_requests - config.num_instructions)
    records = []
    for instruction, reply in zip(instructions, replies_to(rounds, "answers", instructions, "answers")):
        problem = reply_problem(reply)
        if problem:
            tally.drop(problem, {"instruction": instruction, "reply": reply.text, "error": reply.error})
        else:
            records.append({"instruction": instruction, "input": "", "output": reply.text})
    return records


def reply_problem(reply: Reply) -> str | None:
    if reply.text is None:
        return "request refused"
    if reply.truncated:
        return "response cut off by --max-new-tokens"
    if not reply.text.strip():
        return "response empty"
    return None


def reflect(rounds: Rounds, config: SynthesisConfig, records: list[Record], tally: Tally) -> list[Record]:
    """Reflection: the generator rewrites each record's instruction (and answers it anew), its
    response, or both in turn. A reply that cannot be read whole keeps the record as it was."""
    steps = {"instruction": ["instruction"], "response": ["response"], "both": ["instruction", "response"]}[config.reflect]
    for step in steps:
        if step == "instruction":
            prompt, fields = reflect_instruction_prompt, ("instruction", "input", "output")
        else:
            prompt, fields = reflect_response_prompt, ("output",)
        replies = replies_to(rounds, f"reflect-{step}", [prompt(r) for r in records], f"reflecting ({step})")
        improved = []
        for record, reply in zip(records, replies):
            problem = reply_problem(reply)
            sections = read_reflection(reply.text, fields) if problem is None else None
            if sections is None:
                tally.outcomes[f"{step} kept as it was: {problem or 'reply not in the asked format'}"] += 1
                improved.append(record)
            else:
                tally.outcomes[f"{step} rewritten"] += 1
                improved.append({**record, **sections})
        records = improved
    return records


def curate(records: list[Record], config: SynthesisConfig, excluded: list[tuple[str, Record]], tally: Tally
           ) -> tuple[list[Record], list[dict]]:
    """Exact duplicates, then near duplicates, then records too like an evaluation record: the kept
    records, and the contaminated ones kept under --contamination flag."""
    def task(record: Record) -> str:  # a conversation's task is every user turn of it
        users = [m["content"] for m in record.get("messages", []) if m["role"] == "user"]
        return "\n".join(users) if users else f"{record['instruction']}\n{record['input']}".strip()

    seen: dict[str, int] = {}
    unique = []
    for record in records:
        key = " ".join(task(record).casefold().split())
        if key in seen:
            tally.drop("exact duplicate", {**record, "duplicate_of": unique[seen[key]]["instruction"]})
        else:
            seen[key] = len(unique)
            unique.append(record)

    close = near_duplicates([task(r) for r in unique], config.near_duplicate_threshold)
    for index, (other, similarity) in close.items():
        tally.drop("near duplicate (TF-IDF)", {**unique[index], "duplicate_of": unique[other]["instruction"],
                                              "similarity": similarity})
    unique = [r for i, r in enumerate(unique) if i not in close]

    found = contaminated([task(r) for r in unique], [task(r) for _, r in excluded], config.contamination_threshold)
    flagged = []
    for index, (other, similarity) in sorted(found.items()):
        source, match = excluded[other]
        entry = {**unique[index], "similar_to": match["instruction"], "in": source, "similarity": similarity}
        if config.contamination == "drop":
            tally.drop("too similar to an evaluation record (contamination)", entry)
        else:
            flagged.append({"index": index, **entry})
    if config.contamination == "drop":
        unique = [r for i, r in enumerate(unique) if i not in found]
    return unique, flagged


# --- the stage --------------------------------------------------------------------------------------

def _inputs(config: SynthesisConfig) -> dict:
    inputs = {}
    if config.method == "self-instruct":
        inputs["seeds"] = path_input(config.seeds)
    if config.method in ("reflect", "curate"):
        inputs["data"] = path_input(config.data)
    for n, path in enumerate(config.exclude):
        inputs[f"exclude_{n}"] = path_input(path)
    return inputs


def _dry_run(config: SynthesisConfig, seeds: list[SeedTask], records: list[Record]) -> None:
    if config.method == "self-instruct":
        first = _new_tasks_prompt(random.Random(config.seed), seeds, [], config)
        count = (f"rounds of {config.batch_size} requests until {config.num_instructions} new instructions pass the "
                 f"filters (how many rounds depends on the generator), then {2 * config.num_instructions} more "
                 f"(a classification and an instance request per instruction); at most {config.max_requests} in all")
    elif config.method == "magpie":
        model = resolve_model(parse_generator(config.generator)[1])
        first = user_header(load_tokenizer(model, config.trust_remote_code), model.reference)
        count = (f"rounds of {config.batch_size} until {config.num_instructions} instructions pass the filters, then "
                 f"{config.num_instructions} answers; at most {config.max_requests} in all")
    elif config.method == "reflect":
        first = (reflect_instruction_prompt if config.reflect != "response" else reflect_response_prompt)(records[0])
        count = f"{len(records) * (2 if config.reflect == 'both' else 1)} ({len(records)} records, reflect {config.reflect})"
    else:
        first, count = "(none: curate sends no requests)", "0"
    print(f"== first prompt\n{first}\n== requests: {count}\n(dry run: nothing sent, nothing written)")


def generate_data(config: SynthesisConfig) -> Path | None:
    """Run stage 0 and return the path of the data it wrote (None for a dry run)."""
    check(config)
    seeds = load_seed_tasks(config.seeds) if config.method == "self-instruct" else []
    records = load_records(config.data) if config.method in ("reflect", "curate") else []
    if config.method == "reflect" and any("messages" in record for record in records):
        raise UserError(f"{config.data}: --method reflect rewrites single-turn records, and this file holds "
                        "conversations; curate it (--method curate), or give Alpaca records")
    excluded = [(path, record) for path in config.exclude for record in load_records(path)]
    if config.dry_run:
        _dry_run(config, seeds, records)
        return None
    output_dir = Path(config.output_dir)
    final_path = output_dir / OUTPUT_FILE
    settings = {k: v for k, v in asdict(config).items() if k not in NOT_RESULT_SETTINGS}
    with output_lock(output_dir, "generate-data"):
        work = open_work(final_path, settings, _inputs(config), overwrite=config.overwrite, restart=config.restart,
                         stage="stage 0", verb="generating")
        if work.progress is None:
            return final_path
        started = time.perf_counter()
        tally = Tally()
        backend = load_generator(config) if config.method != "curate" else None
        rounds = Rounds(backend, work.progress, config)
        with work.progress.attempt():
            if config.method == "self-instruct":
                records = self_instruct(rounds, config, seeds, tally)
            elif config.method == "magpie":
                records = magpie(rounds, config, tally)
            elif config.method == "reflect":
                records = reflect(rounds, config, records, tally)
        candidates = len(records)
        kept, flagged = curate(records, config, excluded, tally)
        dropped_path = final_path.with_name(final_path.name.replace(".json", ".dropped.json"))
        if config.keep_dropped:
            write_json_atomic(dropped_path, tally.dropped)
        else:
            dropped_path.unlink(missing_ok=True)  # from an earlier run: it would describe other data
        counts = {"requests": rounds.sent, "records_before_curation": candidates, "kept": len(kept),
                  "dropped": dict(sorted(tally.counts.items())), "outcomes": dict(sorted(tally.outcomes.items())),
                  "kept_per_request": round(len(kept) / rounds.sent, 3) if rounds.sent else None}
        if tally.instruction_phase:
            phase = tally.instruction_phase
            counts["instruction_phase"] = {**phase, "kept_per_request": round(phase["instructions_kept"] / max(phase["requests"], 1), 3)}
        work.finish(kept, manifest(
            stage="part0_generate_instruction_data", method=config.method,
            generator=backend.describe() if backend else None, seed=config.seed,
            temperature=sampling_temperature(config), counts=counts, contamination_flagged=flagged,
            seconds=round(time.perf_counter() - started, 2),
        ))
    print(f"\n== stage 0 done: {len(kept)} records ({config.method}) -> {final_path}")
    print(f"  requests {rounds.sent}; before curation {candidates}; dropped: "
          + (", ".join(f"{reason} {n}" for reason, n in sorted(tally.counts.items())) or "none"))
    if tally.outcomes:
        print("  " + ", ".join(f"{what} {n}" for what, n in sorted(tally.outcomes.items())))
    if flagged:
        print(f"  {len(flagged)} records flagged as too like an evaluation record (listed in the .meta.json)")
    print(f"  train on it: python part1_instruction_finetuning.py --data {final_path}")
    return final_path
