"""What goes into the decode loop and what comes out of it: a request's parameters, the events
it produces (pieces of final text, then a Finish), and one Sequence per request, which applies
that request's own stop rules and log-probabilities to each sampled token.

The per-token rules are ours so that the gateway can honour the seed's parameters exactly: stop
strings never reach the output, stop_token_ids stop, and log-probabilities come from each
step's logits (see opsportal.runtime.scheduler for the loop itself).
"""

import codecs
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# Tokens one llama_decode call takes (a long prompt is fed in chunks of this, between the
# generating sequences' tokens), as llama-cpp-python's Llama and llama-server do by default.
N_BATCH = 512


class EngineError(Exception):
    """The model could not be loaded or failed while generating."""


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
    reason: str  # stop | length | cancelled
    completion_tokens: int
    sum_logprob: float


Event = Piece | Finish | EngineError
# Called on the decode thread with the events of one step (never empty), in order.
Sink = Callable[[list[Event]], None]


@dataclass
class EngineStats:
    """What the decode thread has done so far (read without a lock: counters only grow)."""

    steps: int = 0  # llama_decode calls
    shared_steps: int = 0  # steps that decoded more than one sequence
    most_sequences: int = 0  # the most sequences one step decoded
    tokens: int = 0  # tokens fed to llama_decode (prompts and generated)


class Sequence:
    """One request's generation: its sampler, its stop rules, what it has released."""

    def __init__(
        self,
        piece: Callable[[int], bytes],
        prompt: list[int],
        params: GenParams,
        sink: Sink,
        cancel: threading.Event,
        taken: Callable[[], None] | None,
    ) -> None:
        self.piece, self.params, self.sink, self.cancel, self.taken = (
            piece,
            params,
            sink,
            cancel,
            taken,
        )
        self.tokens = list(prompt)  # prompt, then what was sampled
        self.n_prompt = len(prompt)
        self.n_past = 0  # tokens of `tokens` in this sequence's KV cache
        self.slot = -1
        self.arrival = 0
        self.sampler: int | None = None
        self.want_scores = params.logprobs is not None or params.score
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop_ids = set(params.stop_token_ids)
        self.longest_stop = max((len(s) for s in params.stop), default=0)
        self.emitted = ""  # text already released
        self.held = ""  # text that might be the start of a stop string
        self.pending: list[tuple[str, float, dict[str, float]]] = []  # tokens behind `held`
        self.count = 0
        self.sum_logprob = 0.0

    def _release(self, text: str, upto_tokens: int) -> Piece:
        tokens = self.pending[:upto_tokens]
        del self.pending[:upto_tokens]
        offsets, offset = [], len(self.emitted)
        for token_text, _, _ in tokens:
            offsets.append(offset)
            offset += len(token_text)
        self.emitted += text
        return Piece(
            text=text,
            tokens=[t for t, _, _ in tokens],
            token_logprobs=[lp for _, lp, _ in tokens],
            top_logprobs=[top for _, _, top in tokens],
            text_offsets=offsets,
        )

    def finish(self, reason: str, events: list[Event]) -> list[Event]:
        if reason != "cancelled":
            # The end came by length or end-of-generation: what was held back is final.
            tail = self.held + self.decoder.decode(b"", final=True)
            if tail:
                events.append(self._release(tail, len(self.pending)))
        events.append(Finish(reason, self.count, self.sum_logprob))
        return events

    def accept(
        self, token: int, dist: np.ndarray | None, eog: set[int]
    ) -> tuple[list[Event], bool]:
        """Take one sampled token: (events to send, whether the sequence is done)."""
        params = self.params
        if (token in eog and not params.ignore_eos) or token in self.stop_ids:
            return self.finish("stop", []), True
        self.count += 1
        self.tokens.append(token)
        text = self.decoder.decode(self.piece(token))
        logprob, top = 0.0, {}
        if dist is not None:
            logprob = float(dist[token])
            self.sum_logprob += logprob
            if params.logprobs:
                best = np.argpartition(dist, -params.logprobs)[-params.logprobs :]
                for idx in best[np.argsort(dist[best])[::-1]]:
                    top[self.piece(int(idx)).decode("utf-8", errors="replace")] = float(dist[idx])
            if params.logprobs is not None:
                top[text] = logprob
        self.pending.append((text, logprob, top))
        self.held += text
        events: list[Event] = []
        cut = _find_stop(self.held, params.stop)
        if cut is not None:
            kept = self.held[:cut]
            events.append(self._release(kept, _tokens_covering(self.pending, len(kept))))
            events.append(Finish("stop", self.count, self.sum_logprob))
            return events, True
        # Release everything except a tail that could still grow into a stop string.
        keep = _stop_prefix_len(self.held, params.stop, self.longest_stop) if params.stop else 0
        if len(self.held) - keep > 0:
            ready = self.held[: len(self.held) - keep]
            n_tokens = _tokens_covering(self.pending, len(ready))
            if n_tokens:
                ready = "".join(t for t, _, _ in self.pending[:n_tokens])
                events.append(self._release(ready, n_tokens))
                self.held = self.held[len(ready) :]
        if self.count >= params.max_tokens:
            return self.finish("length", events), True
        return events, False


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


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
