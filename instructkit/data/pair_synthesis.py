"""Stage 0's preference pairs for stage 1b: a better and a worse answer to each record of a file
(by default stage 1's training split, so that no test record becomes a pair), made by a model.

- pairs-rewrite, LLMs-from-scratch chapter 7's recipe: the generator rewrites the record's answer
  slightly better or worse (`--better`, `--worse`; with `--direction both` one of the two per
  record, drawn by `--seed`); the rewrite and the answer are the pair.
- pairs-sample, best-of-n on the model's own answers (on-policy pairs, as in the self-rewarding and
  iterative DPO recipes): the run's SFT model answers each record `--samples` times at
  `--temperature`, in the prompt style it was trained with; the generator, as stage 4's judge with
  stage 4's prompt and scoring (a local model's expected score from its token probabilities, a
  server's reply read strictly, asked once more when unreadable), scores each different answer
  0-100 against the record's expected output; the best and the worst are the pair when their scores
  differ by `--min-score-gap`. Answers cut off by `--max-new-tokens` are left out: a pair would teach
  the model to stop mid-sentence, or that stopping is what made the other answer better.

Writes generated/pairs-rewrite.json or generated/pairs-sample.json in LLMs-from-scratch's form
(instruction, input, chosen, rejected), each pair with its `source` (the record, how it was made,
by which models, every answer and score), which stage 1b keeps. Work goes in logged rounds, as in
stage 0's other methods: a killed run resumes where it stopped and ends with the same file.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from instructkit.data.preferences import Pair
from instructkit.data.records import Record, load_records, split_file
from instructkit.data.synthesis import (
    Rounds,
    Tally,
    chunks,
    load_generator,
    replies_to,
    reply_problem,
    sampling_temperature,
)
from instructkit.data.synthesis_config import SynthesisConfig, check, pairs_file
from instructkit.errors import UserError
from instructkit.judge.judges import HFJudge, load_judge
from instructkit.judge.prompts import SCORE_PREFILL, SCORE_RETRY, parse_score, score_prompt
from instructkit.judge.scoring import read_with_retry
from instructkit.models.references import base_reference, require_adapter, resolve_model, run_adapter
from instructkit.runs.artifacts import manifest, output_lock, write_json_atomic
from instructkit.runs.fingerprints import model_input, path_input, reference_input
from instructkit.runs.reuse import open_work

REWRITE_TEMPLATE = """Below are an instruction and a correct response to it. Slightly rewrite the response \
to be {aspect}. Keep the change minimal. Reply with the rewritten response only, and nothing else.

### Instruction:
{instruction}
{input_block}
### Response:
{output}"""
SCORE_TOKENS = 16  # a score is one number (stage 4's --max-new-tokens default)
# What each method's result depends on besides its inputs (the records, the SFT adapter and its base)
RESULT_SETTINGS = {
    "pairs-rewrite": ("method", "generator", "base_url", "direction", "better", "worse", "max_records", "max_requests",
                      "batch_size", "max_new_tokens", "seed"),
    "pairs-sample": ("method", "generator", "base_url", "samples", "temperature", "top_p", "max_records",
                     "max_requests", "batch_size", "max_new_tokens", "seed"),
}
OUTCOME_SETTINGS = ("min_score_gap",)  # applied to the logged scores: a change resumes from the log


def rewrite_prompt(record: Record, aspect: str) -> str:
    input_block = f"\n### Input:\n{record['input']}\n" if record.get("input") else ""
    return REWRITE_TEMPLATE.format(aspect=aspect, instruction=record["instruction"], input_block=input_block,
                                   output=record["output"])


def _per_record(config: SynthesisConfig) -> int:
    """Requests to the generator per record, at most (pairs-sample scores each different answer)."""
    return 1 if config.method == "pairs-rewrite" else config.samples


def _records(config: SynthesisConfig) -> tuple[str, list[Record]]:
    """Where the records come from, and those to make pairs for: as many as --max-records and
    --max-requests allow."""
    source = config.data or str(split_file(config.output_dir, "train"))
    if not config.data and not Path(source).is_file():
        raise UserError(f"{source}: no such file; run stage 1 first (its training split is the default), "
                        "or pass --data FILE")
    records = load_records(source)
    turns = [i for i, record in enumerate(records) if "messages" in record]
    if turns:
        raise UserError(f"{source}: record {turns[0]} is a conversation ({len(turns)} are); --method {config.method} "
                        "makes pairs for single-turn records (instruction, input, output)")
    if config.max_records:
        records = records[:config.max_records]
    affordable = config.max_requests // _per_record(config)
    if affordable < len(records):
        if affordable == 0:
            raise UserError(f"--max-requests {config.max_requests} is too few for one record: --method "
                            f"{config.method} sends up to {_per_record(config)} per record")
        print(f"note: --max-requests {config.max_requests} allows {affordable} of the {len(records)} records "
              f"(up to {_per_record(config)} request{'s' if _per_record(config) > 1 else ''} each): "
              f"taking the first {affordable}")
        records = records[:affordable]
    return source, records


def _directions(config: SynthesisConfig, n: int) -> list[str]:
    """Per record, which way its answer is rewritten: --direction, or drawn by --seed for both."""
    rng = random.Random(config.seed)
    return [config.direction if config.direction != "both" else rng.choice(("better", "worse")) for _ in range(n)]


def _pair(record: Record, chosen: str, rejected: str, source: dict) -> Pair:
    return {"instruction": record["instruction"], "input": record.get("input", ""), "chosen": chosen,
            "rejected": rejected, "source": source}


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def rewrite_pairs(rounds: Rounds, config: SynthesisConfig, source: str, records: list[Record], tally: Tally,
                  generator: dict) -> list[Pair]:
    """Each record's answer against the generator's rewrite of it, better or worse."""
    directions = _directions(config, len(records))
    aspects = {"better": config.better, "worse": config.worse}
    replies = replies_to(rounds, "rewrite", [rewrite_prompt(r, aspects[d]) for r, d in zip(records, directions)],
                         "rewriting answers")
    pairs = []
    for index, (record, direction, reply) in enumerate(zip(records, directions, replies)):
        problem = reply_problem(reply)
        if problem is None and _same(reply.text, record["output"]):
            problem = "rewrite is the answer unchanged"
        if problem:
            tally.drop(problem, {"record": index, "rewrite": direction, "reply": reply.text})
            continue
        rewrite = reply.text.strip()
        chosen, rejected = (rewrite, record["output"]) if direction == "better" else (record["output"], rewrite)
        pairs.append(_pair(record, chosen, rejected, {
            "kind": "rewrite", "file": source, "record": index, "rewritten": direction,
            "to_be": aspects[direction], "generator": generator}))
    return pairs


def sample_pairs(rounds: Rounds, config: SynthesisConfig, source: str, records: list[Record], tally: Tally,
                 generator: dict, adapter: Path) -> tuple[list[Pair], dict]:
    """Each record's best and worst of `--samples` answers by the SFT model, scored by the generator;
    and the template parity check of the prompts the SFT model is asked (data/parity.py)."""
    from instructkit.data.prompts import load_style
    from instructkit.generate.generator import TransformersGenerator
    from instructkit.models.references import trained_quantization

    style = load_style(adapter)
    policy = TransformersGenerator(resolve_model(base_reference("", adapter)), adapter, "", config.trust_remote_code,
                                   ["finetuned"], quantization=trained_quantization(adapter))
    parity = policy.check_parity(style, adapter, "stage 0 (pairs-sample)")
    temperature = sampling_temperature(config)
    scoring = "probability" if isinstance(rounds.backend, HFJudge) else "generate"
    pairs = []
    for n, chunk in enumerate(tqdm(chunks(list(range(len(records))), config.batch_size), desc="sampling and scoring",
                                   unit="round")):
        prompts = [policy.render(style, records[i]) for i in chunk for _ in range(config.samples)]
        answers = rounds.logged(("sample", n), 0, [prompts, temperature], lambda seed, prompts=prompts: policy.sample(
            "finetuned", prompts, config.max_new_tokens, style, temperature=temperature, top_p=config.top_p, seed=seed))
        sampled = {i: answers[m * config.samples:(m + 1) * config.samples] for m, i in enumerate(chunk)}
        candidates = {i: _candidates(sampled[i], tally) for i in chunk}  # each different, whole answer scored once
        asked = [(i, text) for i in chunk for text in candidates[i]]
        scores = iter(_scores(rounds, ("score", n), [score_prompt(records[i], text) for i, text in asked]))
        for index in chunk:
            scored = {text: next(scores) for text in candidates[index]}
            if unscored := sum(v is None for v in scored.values()):
                tally.outcomes["answers the judge gave no score"] += unscored
            best_worst = _best_and_worst(scored, config.min_score_gap)
            answered = [a.text for a in sampled[index]]
            if isinstance(best_worst, str):
                tally.drop(best_worst, {"record": index, "answers": answered, "scores": scored})
                continue
            pairs.append(_pair(records[index], *best_worst, {
                "kind": "sampled", "file": source, "record": index, "policy": str(adapter), "temperature": temperature,
                "judge": generator, "scoring": scoring, "answers": answered, "scores": scored}))
    return pairs, parity


def _candidates(answers: list, tally: Tally) -> list[str]:
    """The different answers worth scoring: neither empty nor cut off by --max-new-tokens."""
    kept: dict[str, str] = {}
    for answer in answers:
        if answer.truncated:
            tally.outcomes["answers cut off by --max-new-tokens (not scored)"] += 1
        elif not answer.text.strip():
            tally.outcomes["empty answers (not scored)"] += 1
        else:
            kept.setdefault(" ".join(answer.text.split()), answer.text.strip())
    return list(kept.values())


def _scores(rounds: Rounds, key: tuple, prompts: list[str]) -> list[float | None]:
    """The judge's 0-100 score of each answer, as stage 4 scores by default: a local judge's expected
    score from its token probabilities, a server's reply read strictly (asked once more when it is
    no score; None if it still is not)."""
    judge = rounds.backend
    if not prompts:
        return []
    ask: Callable[[int], list]
    if isinstance(judge, HFJudge):
        def ask(seed: int) -> list:
            return [None if score is None else round(score, 2) for score, _ in judge.expected_scores(prompts, SCORE_PREFILL)]
    else:
        def ask(seed: int) -> list:
            entries = list(read_with_retry(judge, prompts, SCORE_RETRY, parse_score, SCORE_TOKENS, SCORE_PREFILL))
            rounds.require_answers(key, [e["error"] for e in entries if e.get("failed")], len(entries))
            return [e["value"] for e in entries]
    return rounds.logged_values(key, len(prompts), [prompts, SCORE_PREFILL], ask)


def _best_and_worst(scored: dict[str, float | None], gap: float) -> tuple[str, str] | str:
    """The best and the worst answer (the first sampled of equals), or why there is no pair."""
    known = {text: score for text, score in scored.items() if score is not None}
    if len(known) < 2:
        return "fewer than two different answers with a score"
    best, worst = max(known, key=known.get), min(known, key=known.get)
    if known[best] <= known[worst] or known[best] - known[worst] < gap:  # a pair needs one answer scored better
        return "best and worst within --min-score-gap"
    return best, worst


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{why} {n}" for why, n in counts.items()) or "none"


def generate_pairs(config: SynthesisConfig) -> Path | None:
    """Run stage 0's pairs- methods and return the path of the pairs (None for a dry run)."""
    check(config)
    source, records = _records(config)
    adapter = run_adapter(Path(config.output_dir), config.policy) if config.method == "pairs-sample" else None
    if adapter is not None:
        require_adapter(adapter, "--policy ADAPTER")
    if config.dry_run:
        first = (rewrite_prompt(records[0], config.better if _directions(config, 1)[0] == "better" else config.worse)
                 if config.method == "pairs-rewrite" else score_prompt(records[0], "(an answer sampled from the SFT model)"))
        print(f"== first prompt\n{first}\n== requests: {'up to ' if config.method == 'pairs-sample' else ''}"
              f"{_per_record(config) * len(records)} ({len(records)} records)\n(dry run: nothing sent, nothing written)")
        return None
    final_path = Path(config.output_dir) / pairs_file(config.method)
    settings = {k: v for k, v in asdict(config).items() if k in RESULT_SETTINGS[config.method]}
    inputs = {"data": reference_input(source)}
    if adapter is not None:
        inputs |= {"policy": path_input(adapter), "policy_base": model_input(resolve_model(base_reference("", adapter)))}
    outcome = {k: getattr(config, k) for k in OUTCOME_SETTINGS} if config.method == "pairs-sample" else {}
    with output_lock(Path(config.output_dir), "generate-data"):
        work = open_work(final_path, settings, inputs, overwrite=config.overwrite, restart=config.restart,
                         stage="stage 0", verb="making pairs", outcome_settings=outcome)
        if work.progress is None:
            return final_path
        started = time.perf_counter()
        tally = Tally()
        backend = load_generator(config) if config.method == "pairs-rewrite" else load_judge(
            config.generator, base_url=config.base_url, concurrency=config.concurrency, seed=config.seed,
            max_retries=config.max_retries, timeout=config.request_timeout, trust_remote_code=config.trust_remote_code,
            scoring="probability")
        rounds = Rounds(backend, work.progress, config)
        parity = None
        with work.progress.attempt():
            if config.method == "pairs-rewrite":
                pairs = rewrite_pairs(rounds, config, source, records, tally, backend.describe())
            else:
                pairs, parity = sample_pairs(rounds, config, source, records, tally, backend.describe(), adapter)
        dropped = dict(sorted(tally.counts.items()))
        dropped_path = final_path.with_name(final_path.name.replace(".json", ".dropped.json"))
        if config.keep_dropped:
            write_json_atomic(dropped_path, tally.dropped)
        else:
            dropped_path.unlink(missing_ok=True)  # from an earlier run: it would describe other pairs
        if not pairs:
            raise UserError(f"--method {config.method}: no pair from {len(records)} records of {source} (dropped: "
                            f"{_counted(dropped)}); the replies are kept in {work.progress.path}"
                            + ("; a rerun with a lower --min-score-gap uses them again, more --samples or a higher "
                               "--temperature give more different answers" if config.method == "pairs-sample" else ""))
        counts = {"records": len(records), "requests": rounds.sent, "pairs": len(pairs), "dropped": dropped,
                  "outcomes": dict(sorted(tally.outcomes.items()))}
        work.finish(pairs, manifest(
            stage="part0_generate_instruction_data", method=config.method, generator=backend.describe(),
            policy=str(adapter) if adapter else None, template_parity=parity, data=source, seed=config.seed,
            temperature=sampling_temperature(config), counts=counts, seconds=round(time.perf_counter() - started, 2)))
    print(f"\n== stage 0 done: {len(pairs)} preference pairs ({config.method}) from {len(records)} records -> {final_path}")
    print(f"  requests {rounds.sent}; dropped: {_counted(dropped)}")
    if tally.outcomes:
        print(f"  {_counted(dict(sorted(tally.outcomes.items())))}")
    print(f"  tune on them: python part1b_preference_tuning.py --output-dir {config.output_dir} --data {final_path}")
    return final_path
