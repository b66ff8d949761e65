"""llama.cpp behind one small interface: prompt in, token events out.

The loop is ours (over Llama.generate) rather than llama-cpp-python's create_completion, so
that the gateway can honour the seed's parameters exactly: stop strings never reach the
output, ignore_eos really ignores every end-of-generation token, stop_token_ids stop, and
log-probabilities come from the logits of each step without `logits_all` (which would hold
n_ctx x n_vocab floats in memory).

One Engine is one loaded model; it is not thread-safe, so callers hold `engine.lock`.
"""

import codecs
import importlib.metadata
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAFE_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
    "Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote "
    "fairness and positivity."
)


class EngineError(Exception):
    """The model could not be loaded or failed while generating."""


def resolve_model_path(value: str) -> Path:
    """A file path, or `pkg:<distribution>:<file inside it>` for a model shipped in a wheel."""
    if value.startswith("pkg:"):
        _, dist, inner = value.split(":", 2)
        try:
            located = importlib.metadata.distribution(dist).locate_file(inner)
        except importlib.metadata.PackageNotFoundError as exc:
            raise EngineError(
                f"The package {dist} that ships this model is not installed."
            ) from exc
        path = Path(str(located))
    else:
        path = Path(value).expanduser()
    if not path.is_file():
        raise EngineError(f"Model file not found: {path}")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise EngineError(f"Not a GGUF model file: {path}")
    return path


@dataclass
class GenParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    presence_penalty: float = 0.0
    logprobs: int | None = None  # top-k alternatives per token; 0 = only the sampled token
    score: bool = False  # keep the sampled tokens' log-probs (for best_of) without top-k


@dataclass
class Piece:
    """Text released to the client, with the tokens it came from."""

    text: str
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offsets: list[int]


@dataclass
class Finish:
    reason: str  # stop | length
    completion_tokens: int
    sum_logprob: float


class Engine:
    def __init__(self, model_path: str, *, n_ctx: int, n_threads: int) -> None:
        from llama_cpp import Llama, llama_cpp

        path = resolve_model_path(model_path)
        try:
            self.llm = Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                verbose=False,
            )
        except Exception as exc:  # llama.cpp reports load failures as ValueError/RuntimeError
            raise EngineError(f"llama.cpp could not load {path.name}: {exc}") from exc
        self.path = path
        self.n_ctx = self.llm.n_ctx()
        self.n_threads = n_threads
        self.lock = threading.Lock()
        vocab = self.llm._model.vocab
        self.n_vocab = self.llm.n_vocab()
        self.eog_ids = np.array(
            [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
            dtype=np.intc,
        )
        self._formatter = self._chat_formatter()

    def _chat_formatter(self):  # type: ignore[no-untyped-def]
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        piece = lambda token_id: self.llm._model.token_get_text(token_id)  # noqa: E731
        return Jinja2ChatFormatter(
            template=template,
            eos_token=piece(self.llm.token_eos()),
            bos_token=piece(self.llm.token_bos()),
        )

    # --- prompts ---------------------------------------------------------------------------
    def chat_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        if self._formatter is None:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        else:
            text = self._formatter(messages=messages).prompt
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def text_tokens(self, prompt: str) -> list[int]:
        return self.llm.tokenize(prompt.encode(), add_bos=True, special=False)

    # --- generation ------------------------------------------------------------------------
    def generate(
        self, prompt: list[int], params: GenParams, cancel: threading.Event | None = None
    ) -> Iterator[Piece | Finish]:
        """Yield pieces of text as they become final, then one Finish. Hold `self.lock`."""
        llm = self.llm
        llm.set_seed(random.randrange(2**31))
        want_scores = params.logprobs is not None or params.score
        captured: list[np.ndarray] = []  # the last step's log-probabilities only

        def processor(input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
            if want_scores:
                shifted = logits - logits.max()
                captured[:] = [shifted - np.log(np.exp(shifted).sum())]
            if params.ignore_eos:
                logits[self.eog_ids] = -np.inf
            return logits

        from llama_cpp import LogitsProcessorList

        processors = LogitsProcessorList([processor]) if want_scores or params.ignore_eos else None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stop_ids = set(params.stop_token_ids)
        eog = set(self.eog_ids.tolist())
        longest_stop = max((len(s) for s in params.stop), default=0)
        emitted = ""  # text already released
        held = ""  # text that might be the start of a stop string
        pending: list[tuple[str, float, dict[str, float]]] = []  # tokens behind `held`
        count, sum_logprob, reason, cut_by_stop_string = 0, 0.0, "length", False
        history = list(prompt)

        def release(text: str, upto_tokens: int) -> Piece:
            nonlocal emitted
            tokens = pending[:upto_tokens]
            del pending[:upto_tokens]
            offsets, offset = [], len(emitted)
            for token_text, _, _ in tokens:
                offsets.append(offset)
                offset += len(token_text)
            piece = Piece(
                text=text,
                tokens=[t for t, _, _ in tokens],
                token_logprobs=[lp for _, lp, _ in tokens],
                top_logprobs=[top for _, _, top in tokens],
                text_offsets=offsets,
            )
            emitted += text
            return piece

        if params.max_tokens <= 0:
            yield Finish("length", 0, 0.0)
            return
        for token in llm.generate(
            prompt,
            temp=params.temperature,
            top_p=params.top_p,
            top_k=0,
            min_p=0.0,
            typical_p=1.0,
            repeat_penalty=1.0,
            presence_penalty=params.presence_penalty,
            logits_processor=processors,
        ):
            if cancel is not None and cancel.is_set():
                reason = "cancelled"
                break
            if token in eog and not params.ignore_eos:
                reason = "stop"
                break
            if token in stop_ids:
                reason = "stop"
                break
            count += 1
            token_bytes = llm.detokenize([token], prev_tokens=history)
            history.append(token)
            text = decoder.decode(token_bytes)
            logprob, top = 0.0, {}
            if want_scores and captured:
                dist = captured[-1]
                logprob = float(dist[token])
                sum_logprob += logprob
                if params.logprobs:
                    best = np.argpartition(dist, -params.logprobs)[-params.logprobs :]
                    for idx in best[np.argsort(dist[best])[::-1]]:
                        top[self._piece(int(idx))] = float(dist[idx])
                if params.logprobs is not None:
                    top[text] = logprob
            pending.append((text, logprob, top))
            held += text
            cut = _find_stop(held, params.stop)
            if cut is not None:
                kept = held[:cut]
                yield release(kept, _tokens_covering(pending, len(kept)))
                reason, cut_by_stop_string = "stop", True
                break
            # Release everything except a tail that could still grow into a stop string.
            keep = _stop_prefix_len(held, params.stop, longest_stop) if params.stop else 0
            if len(held) - keep > 0:
                ready = held[: len(held) - keep]
                n_tokens = _tokens_covering(pending, len(ready))
                if n_tokens:
                    ready = "".join(t for t, _, _ in pending[:n_tokens])
                    yield release(ready, n_tokens)
                    held = held[len(ready) :]
            if count >= params.max_tokens:
                reason = "length"
                break
        if reason != "cancelled" and not cut_by_stop_string:
            # The end came by length or end-of-generation: what was held back is final.
            tail = held + decoder.decode(b"", final=True)
            if tail:
                yield release(tail, len(pending))
        yield Finish(reason, count, sum_logprob)

    def _piece(self, token_id: int) -> str:
        return self.llm.detokenize([token_id]).decode("utf-8", errors="replace")


def _find_stop(text: str, stops: list[str]) -> int | None:
    positions = [text.find(s) for s in stops if s and s in text]
    return min(positions) if positions else None


def _stop_prefix_len(text: str, stops: list[str], longest: int) -> int:
    """Length of the longest tail of `text` that is a proper prefix of a stop string."""
    for length in range(min(longest - 1, len(text)), 0, -1):
        tail = text[-length:]
        if any(s.startswith(tail) for s in stops):
            return length
    return 0


def _tokens_covering(pending: list[tuple[str, float, dict[str, float]]], chars: int) -> int:
    """How many whole pending tokens fit in the first `chars` characters."""
    total = n = 0
    for text, _, _ in pending:
        if total + len(text) > chars:
            break
        total += len(text)
        n += 1
    return n
