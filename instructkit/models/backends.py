"""The one layer that turns chat prompts into text, for stage 0's generators and stage 4's judges:
a local transformers model (batched) or any OpenAI-compatible server through the `openai` client
(concurrent, retried, timed out, its key redacted from every message). A fix lands once here."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import torch

from instructkit.errors import UserError
from instructkit.models.loading import load_causal_lm, load_tokenizer
from instructkit.models.references import resolve_model
from instructkit.models.tokens import plain_messages

Message = dict[str, str]
Conversation = list[Message]
# What stands in for the user's words when a chat template is cut to its user header (Magpie).
_CONTENT_MARK = "\x00instructkit-user-content\x00"


@dataclass(frozen=True)
class Reply:
    text: str | None
    error: str | None = None  # why there is no text: the server's error after retries, a refusal
    truncated: bool = False  # the reply hit max_new_tokens before the model ended it
    failed: bool = False  # no answer came back (not a refusal): asked again by the next run, never stored as one

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Reply:
        return cls(**data)


def too_long(length: int, context: int | None, max_new_tokens: int) -> Reply | None:
    """The answer for a prompt that leaves no room for the reply in the model's context (a
    model asked past it runs for minutes and then fails, or answers garbage), else None."""
    if context and length + max_new_tokens > context:
        return Reply(None, f"not asked: the prompt is {length} tokens, and with {max_new_tokens} new ones it is past "
                           f"the model's context of {context}")
    return None


def context_length(config) -> int | None:
    """The longest sequence a transformers model was built for."""
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def user_turn(prompt: str, system: str = "") -> Conversation:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def user_header(tokenizer, name: str) -> str:
    """The chat template up to where a user's message would start (Magpie's pre-query prompt)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{name} has no chat template: Magpie needs an instruct (chat) model")
    text = tokenizer.apply_chat_template(user_turn(_CONTENT_MARK), tokenize=False)
    if _CONTENT_MARK not in text:
        raise UserError(f"the chat template of {name} does not show the user's message as written")
    return text[:text.index(_CONTENT_MARK)]


class HFBackend:
    """A local transformers model answering through its chat template, a batch at a time."""

    def __init__(self, model: str, trust_remote_code: bool = False, attention: str | None = None,
                 dtype: torch.dtype | None = None):
        self.resolved = resolve_model(model)
        self.tokenizer = load_tokenizer(self.resolved, trust_remote_code)
        self.tokenizer.padding_side = "left"
        self.model = load_causal_lm(self.resolved, trust_remote_code=trust_remote_code, attention=attention,
                                    dtype=dtype).eval()

    def describe(self) -> dict:
        return {"kind": "hf", "model": self.resolved.reference, "path": self.resolved.path, "source": self.resolved.source}

    def chat_text(self, conversation: Conversation, prefill: str = "") -> str:
        return self.tokenizer.apply_chat_template(plain_messages(conversation, self.tokenizer), tokenize=False,
                                                  add_generation_prompt=True) + prefill

    def user_header(self) -> str:
        return user_header(self.tokenizer, self.resolved.reference)

    def chat(self, conversations: list[Conversation], max_new_tokens: int, *, prefill: str = "",
             temperature: float = 0.0, top_p: float = 1.0, seed: int = 0) -> list[Reply]:
        return self.complete([self.chat_text(c, prefill) for c in conversations], max_new_tokens,
                             temperature=temperature, top_p=top_p, seed=seed)

    def complete(self, texts: list[str], max_new_tokens: int, *, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0) -> list[Reply]:
        """Continue each text; sampling (temperature > 0) is seeded per call, so a batch redone after a
        kill gives the replies it gave the first time."""
        context = context_length(self.model.config)
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        refused = {i: reply for i, n in enumerate(lengths) if (reply := too_long(n, context, max_new_tokens))}
        asked = [text for i, text in enumerate(texts) if i not in refused]
        replies = iter(self._complete(asked, max_new_tokens, temperature, top_p, seed) if asked else [])
        return [refused[i] if i in refused else next(replies) for i in range(len(texts))]

    def _complete(self, texts: list[str], max_new_tokens: int, temperature: float, top_p: float, seed: int) -> list[Reply]:
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                         **sampling)
        new = output[:, inputs["input_ids"].shape[1]:]
        ends = set(_as_list(self.model.generation_config.eos_token_id)) | {self.tokenizer.eos_token_id}
        replies = []
        for row in new.tolist():
            ended = any(token in ends for token in row)
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            replies.append(Reply(text.strip(), truncated=not ended and len(row) >= max_new_tokens))
        return replies


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, list | tuple) else [value]


class OpenAIBackend:
    """Any OpenAI-compatible chat server. The key is read from OPENAI_API_KEY and kept only in the
    client; the `openai` client retries 429 (honouring Retry-After), 5xx and dropped connections
    with exponential backoff, up to `max_retries` times. `role` names the server in messages."""

    def __init__(self, model: str, base_url: str, *, concurrency: int, seed: int, max_retries: int, timeout: float,
                 role: str, flag: str):
        import openai

        key = os.environ.get("OPENAI_API_KEY", "")
        if not key and not base_url:
            raise UserError(f"{flag} openai:... needs OPENAI_API_KEY in the environment "
                            f"(or {flag}-base-url for a local server that needs no key)")
        self.model, self.base_url, self.concurrency, self.seed, self.role = model, base_url, concurrency, seed, role
        # Local servers (vLLM, Ollama, litgpt serve) ignore the key but the client wants one.
        self.client = openai.OpenAI(api_key=key or "no-key", base_url=base_url or None,
                                    max_retries=max_retries, timeout=timeout)
        self._secret = key

    def describe(self) -> dict:
        return {"kind": "openai", "model": self.model, "base_url": self.base_url or "https://api.openai.com/v1"}

    def chat(self, conversations: list[Conversation], max_new_tokens: int, *, prefill: str = "",
             temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> list[Reply]:
        """The prefill is not sent: chat APIs take no partial assistant turn, and the models behind
        them answer in the requested format. A refused key or unknown model stops every request
        not yet sent: the ones in flight are all that is spent. Request i of a call is sent with
        seed + i, so that a sampled batch asked again gets the same replies where the server honours seeds."""
        stop = threading.Event()
        base_seed = self.seed if seed is None else seed
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = [pool.submit(self._reply, c, max_new_tokens, temperature, top_p, base_seed + i, stop)
                       for i, c in enumerate(conversations)]
            return [future.result() for future in futures]
        except BaseException:
            stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _reply(self, conversation: Conversation, max_new_tokens: int, temperature: float, top_p: float, seed: int,
               stop: threading.Event) -> Reply:
        import openai

        if stop.is_set():
            return Reply(None, "not sent: the run stopped", failed=True)
        try:
            completion = self.client.chat.completions.create(
                model=self.model, messages=conversation, temperature=temperature, top_p=top_p, seed=seed,
                max_tokens=max_new_tokens,
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
            # Every request would fail the same way: stop now, before any more money is spent.
            stop.set()
            raise UserError(f"the {self.role} server at {self.describe()['base_url']} refused: {self._redact(exc)}") from exc
        except (openai.OpenAIError, ValueError) as exc:  # retries spent, or a reply that is not valid JSON
            # A refused request (a prompt past the model's context) would be refused again: that is its answer.
            permanent = isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError))
            return Reply(None, f"{type(exc).__name__}: {self._redact(exc)}", failed=not permanent)
        if not completion.choices:
            return Reply(None, "the server returned no choices", failed=True)
        choice = completion.choices[0]
        if getattr(choice.message, "refusal", None):
            return Reply(None, f"refusal: {self._redact(choice.message.refusal)}")
        return Reply(self._redact((choice.message.content or "").strip()), truncated=choice.finish_reason == "length")

    def _redact(self, text: object) -> str:
        """Errors and replies alike: a server may echo the request's Authorization header."""
        text = str(text)
        return text.replace(self._secret, "[OPENAI_API_KEY]") if self._secret else text
