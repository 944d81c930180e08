"""Judge backends behind one interface: LitGPT's `LLM`, a local transformers model, or any
OpenAI-compatible server (the last two through the shared layer in backends.py). Each answers greedily."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from instructkit.errors import UserError
from instructkit.judge.prompts import SYSTEM
from instructkit.models.backends import HFBackend, OpenAIBackend, Reply, context_length, too_long, user_turn
from instructkit.models.references import (
    BACKEND_KINDS,
    CONVERSION_VERSION,
    EMBEDDED_JUDGE,
    HUB_ID,
    ResolvedModel,
    build_once,
    cache_dir,
    parse_backend,
    resolve_model,
)

# LitGPT's config name for each embedded model it can run.
LITGPT_NAMES = {EMBEDDED_JUDGE: "SmolLM2-135M-Instruct"}
MAX_SCORE = 100


def _with_prefill(prefill: str, continuation: str) -> str:
    return f"{prefill} {continuation.strip()}".strip()


class HFJudge(HFBackend):
    """A local transformers model: batched greedy replies, or expected scores from its token probabilities."""

    def __init__(self, model: str, trust_remote_code: bool = False, attention: str | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(model, trust_remote_code, attention, dtype)
        self._score_tree: ScoreTree | None = None

    def replies(self, prompts: list[str], max_new_tokens: int, prefill: str = "") -> list[Reply]:
        replies = self.chat([user_turn(p, SYSTEM) for p in prompts], max_new_tokens, prefill=prefill)
        return [Reply(_with_prefill(prefill, reply.text)) if reply.text is not None else reply for reply in replies]

    def expected_scores(self, prompts: list[str], prefill: str = "") -> list[tuple[float | None, float]]:
        """(expected score, probability mass on valid scores) per prompt, from one forward pass."""
        if self._score_tree is None:
            self._score_tree = ScoreTree(self.tokenizer, prefill)
        ids = [self.tokenizer(self.chat_text(user_turn(p, SYSTEM), prefill), add_special_tokens=False)["input_ids"]
               for p in prompts]
        context = context_length(self.model.config)
        fits = [i for i, row in enumerate(ids) if not too_long(len(row), context, len(self._score_tree.nodes))]
        scores = iter(self._score_tree.expected_scores(self.model, [ids[i] for i in fits]) if fits else [])
        return [next(scores) if i in fits else (None, 0.0) for i in range(len(ids))]


class ScoreTree:
    """Every score 0-100 as a path of tokens, evaluated for all scores in one forward pass.

    The prompt is followed by the trie of the scores' token sequences (10 + 90 + 1 nodes for a
    one-digit-per-token vocabulary, 101 for one with a token per number); a tree attention mask lets
    each node see the prompt and its own ancestors only, so one pass gives the probability of
    every path. A score ends where the number does: the next token may not be a digit or a decimal
    part (".5", ",5", or a bare "," or "." before one). A full stop after the score is allowed, as
    the reply parser allows "85.": every score node has a "." child, and what follows that must not
    be a digit. So P(8) counts neither "85" nor "8.5" nor "8,5" (which the parser refuses too), and
    P(0) + ... + P(100) <= 1.
    After a prefill ("Score:") a score is tokenized as it follows it (" 85", not "85").
    Needs attention that honours a custom 4D mask (SDPA or eager), not FlashAttention 2.
    """

    def __init__(self, tokenizer, prefill: str = ""):
        self.nodes: list[tuple[int, int]] = []  # (token id, parent node or -1)
        self.paths: dict[int, list[int]] = {}  # score -> node indices along its tokens
        index: dict[tuple[int, ...], int] = {}
        before = tokenizer.encode(prefill, add_special_tokens=False) if prefill else []
        for score in range(MAX_SCORE + 1):
            text = f"{prefill} {score}" if prefill else str(score)
            tokens = tuple(tokenizer.encode(text, add_special_tokens=False))
            if list(tokens[:len(before)]) != before:
                raise ValueError(f"the tokenizer merges {prefill!r} with the score that follows it")
            tokens = tokens[len(before):]
            path = []
            for depth in range(1, len(tokens) + 1):
                prefix = tokens[:depth]
                if prefix not in index:
                    index[prefix] = len(self.nodes)
                    self.nodes.append((prefix[-1], path[-1] if path else -1))
                path.append(index[prefix])
            self.paths[score] = path
        # The full stop after each score: one more node under every score's last node.
        dot = tokenizer.encode(f"{prefill} 8." if prefill else "8.", add_special_tokens=False)[-1]
        self.dots = {}  # score -> node of its full stop
        for score, path in self.paths.items():
            self.dots[score] = len(self.nodes)
            self.nodes.append((dot, path[-1]))
        vocab = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        # Tokens that carry a number on (a digit, a decimal part ".5" or ",5", or a bare "." or ","
        # that a tokenizer splits off first), so that what came before was not a whole score.
        self.continues_number = torch.tensor([text[:1].isdigit() or (text[:1] in ".," and (text[1:2].isdigit() or len(text) == 1))
                                              or i == dot for i, text in enumerate(vocab)])
        self.digit_start = torch.tensor([text[:1].isdigit() for text in vocab])
        self.depth = [0] * len(self.nodes)
        for n, (_, parent) in enumerate(self.nodes):
            self.depth[n] = 1 if parent < 0 else self.depth[parent] + 1

    def _inputs(self, prompts: list[list[int]], dtype: torch.dtype):
        """Left-padded rows of prompt + tree, so that the last n + 1 positions are the ones scored."""
        n = len(self.nodes)
        length = max(len(p) for p in prompts) + n
        input_ids = torch.zeros(len(prompts), length, dtype=torch.long)
        positions = torch.zeros_like(input_ids)
        allowed = torch.zeros(len(prompts), length, length, dtype=torch.bool)
        ancestors = torch.eye(n, dtype=torch.bool)
        for node, (_, parent) in enumerate(self.nodes):
            if parent >= 0:
                ancestors[node] |= ancestors[parent]
        tree = slice(length - n, length)
        for row, prompt in enumerate(prompts):
            p = len(prompt)
            start = length - n - p
            text = slice(start, start + p)
            input_ids[row, text] = torch.tensor(prompt)
            input_ids[row, tree] = torch.tensor([token for token, _ in self.nodes])
            positions[row, text] = torch.arange(p)
            positions[row, tree] = torch.tensor([p - 1 + d for d in self.depth])
            allowed[row, text, text] = torch.tril(torch.ones(p, p, dtype=torch.bool))
            allowed[row, tree, text] = True
            allowed[row, tree, tree] = ancestors
            padding = torch.arange(start)
            allowed[row, padding, padding] = True  # padding sees itself only: no empty softmax rows
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        return input_ids, positions, mask[:, None]

    def score_masses(self, model, prompts: list[list[int]]) -> list[dict[int, float]]:
        """P(the reply is exactly score s) for every s in 0-100, per tokenized prompt."""
        attention = getattr(model.config, "_attn_implementation", "sdpa")
        if attention not in ("sdpa", "eager"):
            raise UserError(f"--scoring probability needs attention that takes a custom mask (sdpa or eager); this "
                            f"judge was loaded with {attention}")
        input_ids, positions, mask = self._inputs(prompts, model.dtype)
        n = len(self.nodes)
        device = model.device
        with torch.inference_mode():
            # Only the last prompt token and the tree nodes need the vocabulary projection.
            logits = model(input_ids=input_ids.to(device), position_ids=positions.to(device),
                           attention_mask=mask.to(device), logits_to_keep=n + 1).logits.float()
        # Qwen2.5 and Phi-3 pad their output layer past the tokenizer's vocabulary; padded rows are
        # never real tokens, and count as ending a number (their probability is ~0 anyway).
        width = logits.shape[-1]
        continues = torch.zeros(width, dtype=torch.bool)
        continues[:min(width, len(self.continues_number))] = self.continues_number[:width]
        digits = torch.zeros(width, dtype=torch.bool)
        digits[:min(width, len(self.digit_start))] = self.digit_start[:width]
        tokens = torch.tensor([token for token, _ in self.nodes])
        parents = torch.tensor([parent for _, parent in self.nodes]) + 1
        masses = []
        for row in range(len(prompts)):
            # Position 0 predicts the first token; position k + 1 what follows node k.
            probs = torch.softmax(logits[row], dim=-1).cpu()
            log_probs = probs.log()
            ends = torch.log1p(-probs[:, continues].sum(-1).clamp(max=1 - 1e-7))
            ends_after_dot = torch.log1p(-probs[:, digits].sum(-1).clamp(max=1 - 1e-7))
            step = log_probs[parents, tokens]  # log P(node's token | its prefix)
            masses.append({score: float((step[path].sum() + ends[path[-1] + 1]).exp()
                                        + (step[path].sum() + step[self.dots[score]] + ends_after_dot[self.dots[score] + 1]).exp())
                           for score, path in self.paths.items()})
        return masses

    def expected_scores(self, model, prompts: list[list[int]]) -> list[tuple[float | None, float]]:
        results = []
        for masses in self.score_masses(model, prompts):
            coverage = sum(masses.values())
            expected = sum(score * mass for score, mass in masses.items()) / coverage if coverage > 0 else None
            results.append((expected, coverage))
        return results


class LitGPTJudge:
    """LitGPT's `LLM` API: a hub id it downloads and converts, a LitGPT checkpoint folder, or the
    embedded judge converted once into the cache."""

    def __init__(self, model: str, dtype: torch.dtype | None = None, trust_remote_code: bool = False):
        from litgpt import LLM
        from litgpt.prompts import Default

        self.reference = model
        self.checkpoint = litgpt_checkpoint(model, trust_remote_code)
        try:
            if torch.cuda.is_available() and dtype is None:
                self.llm = LLM.load(str(self.checkpoint))
            else:  # LitGPT picks bf16 everywhere; on a CPU without native bf16 float32 ran about 3x faster
                self.llm = LLM.load(str(self.checkpoint), distribute=None)
                self.llm.distribute(accelerator="cuda" if torch.cuda.is_available() else "cpu",
                                    precision="bf16-true" if dtype == torch.bfloat16 else "32-true")
        except (OSError, ValueError) as exc:  # offline hub download, unknown model name
            raise UserError(f"LitGPT could not load {model!r} ({type(exc).__name__}: {exc}); offline, use "
                            f"litgpt:{EMBEDDED_JUDGE} or a LitGPT checkpoint folder") from exc
        # The model's chat format is applied here, so that the prefill can follow it; LitGPT then
        # passes the text through unchanged.
        self.chat_style, self.llm.prompt_style = self.llm.prompt_style, Default()

    def describe(self) -> dict:
        return {"kind": "litgpt", "model": self.reference, "checkpoint": str(self.checkpoint)}

    def replies(self, prompts: list[str], max_new_tokens: int, prefill: str = "") -> list[Reply]:
        replies = []
        for prompt in prompts:
            text = self.chat_style.apply(prompt, sys_prompt=SYSTEM) + prefill
            refused = too_long(len(self.llm.preprocessor.encode(text)), self.llm.config.block_size, max_new_tokens)
            replies.append(refused or Reply(_with_prefill(prefill, self.llm.generate(
                text, max_new_tokens=max_new_tokens, temperature=0.0))))
        return replies


def litgpt_checkpoint(model: str, trust_remote_code: bool = False) -> Path | str:
    """A folder LitGPT's `LLM.load` reads: converted once for an embedded name, else as given."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "lit_model.pth").is_file():
            raise UserError(f"{path} is not a LitGPT checkpoint (no lit_model.pth); convert it with "
                            "`litgpt convert_to_litgpt`, or judge with hf:" + model)
        if not trust_remote_code:
            require_plain_tensors(path / "lit_model.pth")
        return path
    if model in LITGPT_NAMES:
        return _converted_for_litgpt(resolve_model(model), LITGPT_NAMES[model])
    if HUB_ID.match(model):
        if not trust_remote_code:  # LitGPT converts a hub repo's .bin files with its unrestricted unpickler
            raise UserError(f"litgpt:{model}: LitGPT would download and convert it, unpickling any .bin file in the "
                            f"repo, which can run code; judge with hf:{model} (safetensors, or .bin weights-only), or "
                            "pass --trust-remote-code if you trust the repo")
        return model
    raise UserError(f"litgpt judge {model!r}: use {', '.join(LITGPT_NAMES)}, a LitGPT checkpoint folder or a hub id")


def require_plain_tensors(checkpoint: Path) -> None:
    """LitGPT reads lit_model.pth with an unpickler that runs whatever code the file names; a file
    torch's weights-only unpickler accepts holds tensors and nothing else."""
    import pickle

    try:
        torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        # torch's message is a paragraph; the line naming what the file asked for is the useful one
        named = next((line for line in str(exc).splitlines() if "GLOBAL" in line), "not a torch checkpoint")
        raise UserError(f"{checkpoint} holds more than tensors, and loading it could run code from the file "
                        f"({named.strip()[:200]}); judge with a folder of safetensors through "
                        "hf:<folder>, or pass --trust-remote-code if you trust where the file came from") from exc


def _converted_for_litgpt(resolved: ResolvedModel, litgpt_name: str) -> Path:
    """LitGPT's own checkpoint format (lit_model.pth + model_config.yaml), made once under the cache."""
    def convert(staging: Path) -> None:
        from litgpt.scripts.convert_hf_checkpoint import convert_hf_checkpoint

        for file in Path(resolved.path).iterdir():
            if file.suffix != ".safetensors":
                shutil.copy(file, staging)
            else:
                os.symlink(file, staging / file.name)  # read once by the converter, not kept
        convert_hf_checkpoint(checkpoint_dir=staging, model_name=litgpt_name)
        for file in staging.glob("*.safetensors"):
            file.unlink()

    target = cache_dir() / f"litgpt-v{CONVERSION_VERSION}" / resolved.reference
    return build_once(target, "lit_model.pth", convert,
                      f"converting {resolved.reference} to a LitGPT checkpoint in {target} (once)")


class OpenAIJudge(OpenAIBackend):
    def __init__(self, model: str, base_url: str, concurrency: int, seed: int, max_retries: int, timeout: float):
        super().__init__(model, base_url, concurrency=concurrency, seed=seed, max_retries=max_retries,
                         timeout=timeout, role="judge", flag="--judge")

    def replies(self, prompts: list[str], max_new_tokens: int, prefill: str = "") -> list[Reply]:
        return self.chat([user_turn(p, SYSTEM) for p in prompts], max_new_tokens, prefill=prefill)


def load_judge(reference: str, *, base_url: str = "", concurrency: int = 4, seed: int = 0,
               max_retries: int = 4, timeout: float = 60.0, trust_remote_code: bool = False, scoring: str = "generate",
               dtype: torch.dtype | None = None):
    """A judge for `reference`; local ones (litgpt:, hf:) hold their weights in `dtype`."""
    kind, model = parse_backend(reference, "--judge", BACKEND_KINDS, f"litgpt:{EMBEDDED_JUDGE} or openai:gpt-4o-mini")
    if base_url and kind != "openai":
        raise UserError("--judge-base-url is for openai: judges (any OpenAI-compatible server)")
    if kind == "litgpt":
        return LitGPTJudge(model, dtype, trust_remote_code)
    if kind == "hf":
        # Probability scoring runs a tree-shaped 4D mask, which FlashAttention 2 would ignore.
        return HFJudge(model, trust_remote_code, attention="sdpa" if scoring == "probability" else None, dtype=dtype)
    return OpenAIJudge(model, base_url, concurrency, seed, max_retries, timeout)
