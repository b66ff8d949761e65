"""The decode thread and everything it owns: one llama.cpp context with a KV stream per slot, the
batch, the slots and the queues. Every step puts one token of each generating sequence, and as
much of the waiting prompts as fits, into one `llama_decode` batch, then samples each sequence
with its own llama.cpp sampler chain. Requests are taken first come, first served; a cancelled
one leaves the batch at the next step.
"""

import collections
import ctypes
import itertools
import logging
import random
import threading
from typing import TYPE_CHECKING

import numpy as np

from opsportal.runtime.decoding import (
    N_BATCH,
    EngineError,
    EngineStats,
    Event,
    GenParams,
    Sequence,
    common_prefix,
)

if TYPE_CHECKING:  # the class only; importing llama_cpp loads libllama (see engine.py)
    from llama_cpp._internals import LlamaModel

log = logging.getLogger(__name__)


class Scheduler:
    """The decode thread and everything it owns: context, batch, slots, queues."""

    def __init__(
        self,
        model: "LlamaModel",
        *,
        eog: set[int],
        stats: EngineStats,
        n_ctx: int,
        n_threads: int,
        slots: int,
    ) -> None:
        from llama_cpp import llama_cpp  # late: see opsportal.runtime.engine

        self.lib = llama_cpp
        self.model = model  # keeps the model alive as long as the context
        self.vocab = model.vocab
        self.n_vocab = model.n_vocab()
        self.eog = eog
        self.stats = stats
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
        ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not ctx:
            raise EngineError(
                f"llama.cpp could not make a context of {slots} x {n_ctx} tokens (out of memory?)."
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
        self.active: list[Sequence] = []
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.inbox: list[Sequence] = []
        self.arrivals = itertools.count()
        self.cv = threading.Condition()
        self.closed = False
        self.failed: str | None = None
        self.thread = threading.Thread(target=self._run, name="llama-decode", daemon=True)
        self.thread.start()

    # --- from any thread ---------------------------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        with self.cv:
            if self.closed or self.failed is not None:
                reason = self.failed or "The engine was unloaded."
                deliver(seq, [EngineError(reason)])
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
                deliver(seq, seq.finish("cancelled", []))
        while self.waiting and self.free:
            self._start(self.waiting.popleft())
        return True

    def _start(self, seq: Sequence) -> None:
        lib = self.lib
        # Reuse the free slot whose cache shares the longest prefix with this prompt (a chat
        # turn, a repeated prompt), else the lowest: active sequence ids stay close together
        # (see _step). At least the last prompt token is decoded, for its logits.
        best = max(self.free, key=lambda s: (common_prefix(self.cached[s], seq.tokens), -s))
        self.free.remove(best)
        keep = min(common_prefix(self.cached[best], seq.tokens), seq.n_prompt - 1)
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

    def _end(self, seq: Sequence, events: list[Event]) -> None:
        """The sequence is done: free its slot (its cache stays, for a later prefix)."""
        self.active.remove(seq)
        if seq.sampler is not None:
            self.lib.llama_sampler_free(seq.sampler)
            seq.sampler = None
        self.cached[seq.slot] = seq.tokens[: seq.n_past]
        self.free.append(seq.slot)
        deliver(seq, events)

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
                deliver(seq, events)

    def _fail(self, reason: str) -> None:
        with self.cv:
            if self.failed is None:
                self.failed = reason
            pending = [*self.active, *self.waiting, *self.inbox]
            self.active, self.inbox = [], []
            self.waiting.clear()
        for seq in pending:
            deliver(seq, [EngineError(reason)])

    def _free(self) -> None:
        lib = self.lib
        lib.llama_batch_free(self.batch)
        lib.llama_free(self.ctx)
        self.ctx = None


def deliver(seq: Sequence, events: list[Event]) -> None:
    try:
        seq.sink(events)
    except Exception:  # a consumer that went away must not stop the others
        log.exception("could not hand generation events over")
