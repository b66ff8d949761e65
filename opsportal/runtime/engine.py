"""llama.cpp behind one small interface: prompt in, token events out, many sequences at once.

One Engine is one loaded model and one llama.cpp context with `slots` sequences in its KV cache
(each with the full `n_ctx` it promises). A single decode thread owns the context: every step it
puts one token of each generating sequence, and as much of the waiting prompts as fits, into one
`llama_decode` batch, then samples each sequence with its own llama.cpp sampler chain. Requests
are taken first come, first served; a cancelled one leaves the batch at the next step.

The per-token loop is ours so that the gateway can honour the seed's parameters exactly: stop
strings never reach the output, ignore_eos really ignores every end-of-generation token (a
logit bias of -inf), stop_token_ids stop, presence_penalty counts the generated tokens, and
log-probabilities come from each step's logits without `logits_all`.

The engine is thread-safe: `submit` and `generate` may be called from any thread.
"""

import codecs
import collections
import ctypes
import importlib.metadata
import itertools
import logging
import queue
import random
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAFE_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
    "Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote "
    "fairness and positivity."
)
# Tokens one llama_decode call takes (a long prompt is fed in chunks of this, between the
# generating sequences' tokens), as llama-cpp-python's Llama and llama-server do by default.
N_BATCH = 512


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


class Engine:
    def __init__(self, model_path: str, *, n_ctx: int, n_threads: int, slots: int = 1) -> None:
        # llama_cpp is imported here and in _Scheduler, not at the top: the web and worker
        # processes import this module (through runtime.control) for its names only, and only
        # a process that runs a model should load libllama and its OpenMP runtime.
        from llama_cpp import llama_cpp
        from llama_cpp._internals import LlamaModel
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp's load and context reports: errors only
        path = resolve_model_path(model_path)
        slots = max(1, slots)
        try:
            model = LlamaModel(
                path_model=str(path), params=llama_cpp.llama_model_default_params(), verbose=False
            )
        except Exception as exc:  # llama.cpp reports load failures as ValueError/RuntimeError
            raise EngineError(f"llama.cpp could not load {path.name}: {exc}") from exc
        self.path = path
        self.n_ctx = n_ctx  # per sequence
        self.n_threads = n_threads
        self.slots = slots
        self.model = model
        self.n_vocab = model.n_vocab()
        self.eog_ids = np.array(
            [t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(model.vocab, t)],
            dtype=np.intc,
        )
        # Kept for callers that serialise their own use; the engine does not need it.
        self.lock = threading.Lock()
        self.stats = EngineStats()
        self._metadata = model.metadata()
        self._formatter = self._chat_formatter()
        self._scheduler = _Scheduler(self, n_ctx=n_ctx, n_threads=n_threads, slots=slots)
        # The decode thread holds only the scheduler: an engine nobody uses is freed.
        weakref.finalize(self, self._scheduler.close)

    def _chat_formatter(self):  # type: ignore[no-untyped-def]
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # late: see Engine.__init__

        template = self._metadata.get("tokenizer.chat_template")
        if not template:
            return None
        piece = self.model.token_get_text
        return Jinja2ChatFormatter(
            template=template,
            eos_token=piece(self.model.token_eos()),
            bos_token=piece(self.model.token_bos()),
        )

    @property
    def broken(self) -> bool:
        return self._scheduler.failed is not None

    def close(self) -> None:
        """Stop the decode thread (ending what runs with an error) and free the context."""
        self._scheduler.close()

    # --- prompts ---------------------------------------------------------------------------
    def chat_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        if self._formatter is None:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        else:
            text = self._formatter(messages=messages).prompt
        return self.model.tokenize(text.encode(), add_bos=False, special=True)

    def text_tokens(self, prompt: str) -> list[int]:
        return self.model.tokenize(prompt.encode(), add_bos=True, special=False)

    # --- generation ------------------------------------------------------------------------
    def submit(
        self,
        prompt: list[int],
        params: GenParams,
        sink: Sink,
        cancel: threading.Event | None = None,
        taken: Callable[[], None] | None = None,
    ) -> None:
        """Queue one sequence. `sink` gets its events, the last being a Finish or an
        EngineError; `taken` is called once the decode thread has taken the request in (it
        runs from the next step, or waits its turn for a free slot)."""
        if not prompt or len(prompt) + max(params.max_tokens, 0) > self.n_ctx:
            raise EngineError(
                f"The prompt ({len(prompt)} tokens) plus max_tokens ({params.max_tokens}) does "
                f"not fit a slot's context of {self.n_ctx} tokens."
            )
        seq = _Sequence(self, prompt, params, sink, cancel or threading.Event(), taken)
        self._scheduler.submit(seq)

    def generate(
        self, prompt: list[int], params: GenParams, cancel: threading.Event | None = None
    ) -> Iterator[Piece | Finish]:
        """Yield pieces of text as they become final, then one Finish (one sequence)."""
        cancel = cancel or threading.Event()
        events: queue.SimpleQueue[list[Event]] = queue.SimpleQueue()
        self.submit(prompt, params, events.put, cancel)
        try:
            while True:
                for event in events.get():
                    if isinstance(event, EngineError):
                        raise event
                    yield event
                    if isinstance(event, Finish):
                        return
        finally:
            cancel.set()  # the caller stopped early: free the slot

    # --- text of tokens ----------------------------------------------------------------------
    def token_bytes(self, token: int) -> bytes:
        return self._scheduler.piece(token)

    def _piece(self, token_id: int) -> str:
        return self.token_bytes(token_id).decode("utf-8", errors="replace")


class _Sequence:
    """One request's generation: its sampler, its stop rules, what it has released."""

    def __init__(
        self,
        engine: Engine,
        prompt: list[int],
        params: GenParams,
        sink: Sink,
        cancel: threading.Event,
        taken: Callable[[], None] | None,
    ) -> None:
        self.engine, self.params, self.sink, self.cancel, self.taken = (
            engine,
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
        self.sampler = None
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
        text = self.decoder.decode(self.engine.token_bytes(token))
        logprob, top = 0.0, {}
        if dist is not None:
            logprob = float(dist[token])
            self.sum_logprob += logprob
            if params.logprobs:
                best = np.argpartition(dist, -params.logprobs)[-params.logprobs :]
                for idx in best[np.argsort(dist[best])[::-1]]:
                    top[self.engine._piece(int(idx))] = float(dist[idx])
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


class _Scheduler:
    """The decode thread and everything it owns: context, batch, slots, queues."""

    def __init__(self, engine: Engine, *, n_ctx: int, n_threads: int, slots: int) -> None:
        from llama_cpp import llama_cpp  # late: see Engine.__init__

        self.lib = llama_cpp
        self.model = engine.model  # keeps the model alive as long as the context
        self.vocab = engine.model.vocab
        self.n_vocab = engine.n_vocab
        self.eog = set(engine.eog_ids.tolist())
        self.stats = engine.stats
        self.slots = slots
        self.n_ctx_slot = n_ctx
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * slots
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = slots
        params.n_threads = params.n_threads_batch = n_threads
        # One KV stream per sequence: each keeps its whole n_ctx, and attention only reads its own.
        params.kv_unified = False
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(engine.model.model, params)
        if not ctx:
            raise EngineError(
                f"llama.cpp could not make a context of {slots} x {n_ctx} tokens "
                f"for {engine.path.name} (out of memory?)."
            )
        self.ctx = ctx
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.batch = llama_cpp.llama_batch_init(max(N_BATCH, slots), 0, 1)
        self.token_view = np.ctypeslib.as_array(self.batch.token, shape=(N_BATCH,))
        self.pos_view = np.ctypeslib.as_array(self.batch.pos, shape=(N_BATCH,))
        self.logits_view = np.ctypeslib.as_array(self.batch.logits, shape=(N_BATCH,))
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=(N_BATCH,))[:] = 1
        self.seq_ids = [self.batch.seq_id[i] for i in range(N_BATCH)]
        bias = (llama_cpp.llama_logit_bias * len(self.eog))()
        for i, token in enumerate(sorted(self.eog)):
            bias[i].token, bias[i].bias = token, float("-inf")
        self.no_eos_bias = bias
        self.pieces: dict[int, bytes] = {}
        self.cached: list[list[int]] = [[] for _ in range(slots)]  # what each slot's KV holds
        self.free = list(range(slots))
        self.active: list[_Sequence] = []
        self.waiting: collections.deque[_Sequence] = collections.deque()
        self.inbox: list[_Sequence] = []
        self.arrivals = itertools.count()
        self.cv = threading.Condition()
        self.closed = False
        self.failed: str | None = None
        self.thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
        self.thread.start()

    # --- from any thread ---------------------------------------------------------------------
    def submit(self, seq: _Sequence) -> None:
        with self.cv:
            if self.closed or self.failed is not None:
                reason = self.failed or "The engine was unloaded."
                _deliver(seq, [EngineError(reason)])
                return
            seq.arrival = next(self.arrivals)
            self.inbox.append(seq)
            self.cv.notify()

    def close(self) -> None:
        with self.cv:
            if self.closed:
                return
            self.closed = True
            self.cv.notify()
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)

    def piece(self, token: int) -> bytes:
        text = self.pieces.get(token)
        if text is None:
            buf = ctypes.create_string_buffer(64)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self.lib.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            text = self.pieces[token] = buf.raw[: max(n, 0)]
        return text

    # --- the decode thread -------------------------------------------------------------------
    def _warm_up(self) -> None:
        """A small batch over every slot, then an empty cache: the first request does not pay
        for paging the weights in and first-touching the buffers (half a second)."""
        lib = self.lib
        token = max(self.model.token_bos(), 0)
        per_slot = [1] * self.slots
        per_slot[0] = max(1, min(32, self.n_ctx_slot))
        n = 0
        for slot, count in enumerate(per_slot):
            self.token_view[n : n + count] = token
            self.pos_view[n : n + count] = np.arange(count)
            self.logits_view[n : n + count] = 0
            for i in range(n, n + count):
                self.seq_ids[i][0] = slot
            n += count
            self.logits_view[n - 1] = 1
        self.batch.n_tokens = n
        lib.llama_decode(self.ctx, self.batch)
        lib.llama_memory_clear(self.memory, True)

    def _run(self) -> None:
        try:
            self._warm_up()
            while self._next_round():
                if self.active:  # all may have been cancelled, with nobody waiting
                    self._step()
        except Exception as exc:  # a crash inside llama.cpp's Python layer, or ours
            log.exception("decode loop failed")
            self._fail(f"The model failed while generating: {exc}")
        finally:
            self._fail("The engine was unloaded.")
            self._free()

    def _next_round(self) -> bool:
        """Take new requests in, drop cancelled ones, fill free slots; False once closed."""
        with self.cv:
            while not self.inbox and not self.active and not self.closed:
                # Waiting requests need a free slot, which only a step can make.
                self.cv.wait()
            if self.closed:
                return False
            inbox, self.inbox = self.inbox, []
        for seq in inbox:
            self.waiting.append(seq)
            if seq.taken is not None:
                seq.taken()
        for seq in [s for s in self.active if s.cancel.is_set()]:
            self._end(seq, seq.finish("cancelled", []))
        if any(s.cancel.is_set() for s in self.waiting):
            for seq in [s for s in self.waiting if s.cancel.is_set()]:
                self.waiting.remove(seq)
                _deliver(seq, seq.finish("cancelled", []))
        while self.waiting and self.free:
            self._start(self.waiting.popleft())
        return True

    def _start(self, seq: _Sequence) -> None:
        lib = self.lib
        # Reuse the free slot whose cache shares the longest prefix with this prompt (a chat
        # turn, a repeated prompt), else the lowest: active sequence ids stay close together
        # (see _step). At least the last prompt token is decoded, for its logits.
        best = max(self.free, key=lambda s: (_common_prefix(self.cached[s], seq.tokens), -s))
        self.free.remove(best)
        keep = min(_common_prefix(self.cached[best], seq.tokens), seq.n_prompt - 1)
        if keep <= 0 or not lib.llama_memory_seq_rm(self.memory, best, keep, -1):
            lib.llama_memory_seq_rm(self.memory, best, -1, -1)
            keep = 0
        self.cached[best] = []
        seq.slot, seq.n_past = best, keep
        seq.sampler = self._sampler(seq.params)
        self.active.append(seq)
        if seq.params.max_tokens <= 0:
            self._end(seq, seq.finish("length", []))

    def _sampler(self, params: GenParams) -> int:
        """A llama.cpp sampler chain in the order llama-cpp-python's Llama builds it."""
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if params.ignore_eos and self.eog:
            lib.llama_sampler_chain_add(
                chain,
                lib.llama_sampler_init_logit_bias(
                    self.n_vocab, len(self.no_eos_bias), self.no_eos_bias
                ),
            )
        if params.presence_penalty:
            # Only generated tokens are accepted into it, all of them (the API's meaning).
            lib.llama_sampler_chain_add(
                chain,
                lib.llama_sampler_init_penalties(
                    self.n_vocab, max(1, params.max_tokens), 1.0, 0.0, params.presence_penalty
                ),
            )
        if params.temperature == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            if params.top_p < 1.0:
                lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(params.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(params.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(random.randrange(2**31)))
        return chain

    def _end(self, seq: _Sequence, events: list[Event]) -> None:
        """The sequence is done: free its slot (its cache stays, for a later prefix)."""
        self.active.remove(seq)
        if seq.sampler is not None:
            self.lib.llama_sampler_free(seq.sampler)
            seq.sampler = None
        self.cached[seq.slot] = seq.tokens[: seq.n_past]
        self.free.append(seq.slot)
        _deliver(seq, events)

    def _step(self) -> None:
        lib, stats = self.lib, self.stats
        # Who gets the batch: generating sequences first (one token each), then prompts in
        # arrival order, so a long prompt never holds up the others for more than one chunk.
        plan, room = [], N_BATCH
        for seq in sorted(self.active, key=lambda s: s.n_past < s.n_prompt):
            take = min(len(seq.tokens) - seq.n_past, room)
            if take > 0:
                plan.append((seq, take))
                room -= take
            if room == 0:
                break
        # Where in it: by slot. llama.cpp splits a batch over several KV streams into one
        # sub-batch per run of consecutive sequence ids in batch order; out of order, every
        # sequence would cost a pass over the weights of its own.
        plan.sort(key=lambda item: item[0].slot)
        n, outputs = 0, []
        for seq, take in plan:
            self.token_view[n : n + take] = seq.tokens[seq.n_past : seq.n_past + take]
            self.pos_view[n : n + take] = np.arange(seq.n_past, seq.n_past + take)
            self.logits_view[n : n + take] = 0
            for i in range(n, n + take):
                self.seq_ids[i][0] = seq.slot
            seq.n_past += take
            n += take
            if seq.n_past == len(seq.tokens):
                self.logits_view[n - 1] = 1
                outputs.append((n - 1, seq))
        self.batch.n_tokens = n
        rc = lib.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise EngineError(f"llama_decode returned {rc}")
        stats.steps += 1
        stats.tokens += n
        if len(plan) > 1:
            stats.shared_steps += 1
        stats.most_sequences = max(stats.most_sequences, len(plan))
        # Sequences that end in the same step answer in the order they arrived.
        outputs.sort(key=lambda item: item[1].arrival)
        for index, seq in outputs:
            dist = None
            if seq.want_scores:
                logits = np.ctypeslib.as_array(
                    lib.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,)
                )
                shifted = logits - logits.max()
                dist = shifted - np.log(np.exp(shifted).sum())
            token = lib.llama_sampler_sample(seq.sampler, self.ctx, index)
            events, done = seq.accept(token, dist, self.eog)
            if done:
                self._end(seq, events)
            elif events:
                _deliver(seq, events)

    def _fail(self, reason: str) -> None:
        with self.cv:
            if self.failed is None:
                self.failed = reason
            pending = [*self.active, *self.waiting, *self.inbox]
            self.active, self.inbox = [], []
            self.waiting.clear()
        for seq in pending:
            _deliver(seq, [EngineError(reason)])

    def _free(self) -> None:
        lib = self.lib
        lib.llama_batch_free(self.batch)
        lib.llama_free(self.ctx)
        self.ctx = None


def _deliver(seq: _Sequence, events: list[Event]) -> None:
    try:
        seq.sink(events)
    except Exception:  # a consumer that went away must not stop the others
        log.exception("could not hand generation events over")


def _common_prefix(a: list[int], b: list[int]) -> int:
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
