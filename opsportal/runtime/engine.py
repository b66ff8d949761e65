"""llama.cpp behind one small interface: prompt in, token events out, many sequences at once.

One Engine is one loaded model and one llama.cpp context with `slots` sequences in its KV cache
(each with the full `n_ctx` it promises), run by one decode thread (opsportal.runtime.scheduler).
The per-token rules (stop strings, stop_token_ids, ignore_eos as a logit bias of -inf,
presence_penalty over the generated tokens, log-probabilities without `logits_all`) are in
opsportal.runtime.decoding, so that the gateway honours the seed's parameters exactly.

The engine is thread-safe: `submit` and `generate` may be called from any thread.
"""

import importlib.metadata
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from opsportal.runtime.decoding import (
    EngineError,
    EngineStats,
    Event,
    Finish,
    GenParams,
    Piece,
    Sequence,
    Sink,
)
from opsportal.runtime.scheduler import Scheduler

log = logging.getLogger(__name__)


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


class Engine:
    def __init__(self, model_path: str, *, n_ctx: int, n_threads: int, slots: int = 1) -> None:
        # llama_cpp is imported here and in the Scheduler, not at the top: the web and worker
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
        self._scheduler = Scheduler(
            model,
            eog=set(self.eog_ids.tolist()),
            stats=self.stats,
            n_ctx=n_ctx,
            n_threads=n_threads,
            slots=slots,
        )
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
        seq = Sequence(self.token_bytes, prompt, params, sink, cancel or threading.Event(), taken)
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
