#!/usr/bin/env python
"""The local runtime's data plane against the engine directly and against llama.cpp's own server.

One run, one model (the bundled SmolLM2-135M), the same threads:

1. A single stream, alternating A/B: each prompt streamed by llama-cpp-python in this process
   (the engine, called directly) and through the gateway over HTTP (a separate runtime process,
   as `make run` starts it), end-of-generation ignored so both do the same work.
2. 1, 4, 8 and 16 concurrent streams (streamed chat, the same prompt, greedy, 32 tokens each),
   alternating between our gateway and llama.cpp's `llama-server` (built by `make llama-server`
   from the llama.cpp that llama-cpp-python vendors, same CPU flags; `--parallel` = our slots):
   aggregate tokens/s and per-stream time to first token.
3. 16 streams arriving 20 ms apart: every one must succeed, and none may finish a decode step
   or more before one that arrived earlier (the replica takes requests first come, first
   served; those it takes in together end in the same step).
4. The single stream again, alternating as in 1: the gateway must be as fast after the load
   (its share of the direct engine's speed, which also says how busy the machine was).

It makes its own database and endpoint under var/bench/. Prints a table, then one JSON line.

    python bench/gateway.py [--rounds 2] [--tokens 128] [--sweep-rounds 5]
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

import _venv

ROOT = _venv.ROOT

VAR = ROOT / "var" / "bench" / "gateway"
PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List some facts about the moon.",
    "Describe a busy market in the morning.",
    "What makes a good cup of tea?",
]
CONCURRENCY = [1, 4, 8, 16]
SWEEP_TOKENS = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_django(port: int) -> None:
    _venv.django_on_own_database(VAR, "gateway.sqlite3", OPSPORTAL_RUNTIME_PORT=str(port))


@dataclass
class Deployed:
    uri: str
    key: str
    model_path: str
    n_ctx: int  # per slot
    slots: int


def deploy() -> Deployed:
    from django.conf import settings
    from django.core.management import call_command

    from opsportal.inventory.models import Endpoint
    from opsportal.inventory.services import local_workspace_ensure
    from opsportal.providers import for_workspace
    from opsportal.runtime.control import SERVERLESS_MAX_CTX

    call_command("migrate", verbosity=0)
    provider = for_workspace(local_workspace_ensure())
    Endpoint.objects.filter(name="bench-gateway").delete()
    provider.subscription_create(offering_slug="smollm2-135m-instruct")
    info = provider.endpoint_create(
        name="bench-gateway", kind="serverless", offering_slug="smollm2-135m-instruct"
    )
    offering = provider._offering("smollm2-135m-instruct")
    return Deployed(
        uri=info.scoring_uri,
        key=provider.keys_get(name="bench-gateway").primary,
        model_path=offering.local_model_path,
        n_ctx=min(offering.context_length or 4096, SERVERLESS_MAX_CTX),
        slots=settings.OPSPORTAL_RUNTIME_SERVERLESS_SLOTS,
    )


def wait_ready(uri: str, key: str, proc: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"The runtime exited with code {proc.returncode}.")
        try:
            r = httpx.post(
                f"{uri}/v1/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"prompt": "Hi", "max_tokens": 1},
                timeout=10,
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    sys.exit("The endpoint did not become ready in 120 s.")


def llama_server_binary() -> Path:
    """`make llama-server`: built once into ~/.cache/opsportal/, then only its path."""
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "llama-server", f"PY={sys.executable}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0:
        sys.exit("`make llama-server` failed; see its output above.")
    return Path(done.stdout.strip().splitlines()[-1])


def start_llama_server(binary: Path, dep: Deployed, threads: int, port: int) -> subprocess.Popen:
    """The peer as a user would run it, set up like our engine: same model, threads, slots,
    context per slot, one KV stream per slot, batch size and attention kernel."""
    import httpx

    from opsportal.runtime.decoding import N_BATCH
    from opsportal.runtime.engine import resolve_model_path

    # fmt: off
    args = [
        str(binary), "-m", str(resolve_model_path(dep.model_path)),
        "--host", "127.0.0.1", "--port", str(port),
        "-t", str(threads), "-tb", str(threads),
        "-np", str(dep.slots), "-c", str(dep.slots * dep.n_ctx), "--no-kv-unified",
        "-b", str(N_BATCH), "-ub", str(N_BATCH), "-fa", "off",
    ]
    # fmt: on
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"llama-server exited with code {proc.returncode}: {' '.join(args)}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit("llama-server did not become ready in 120 s.")


def direct_stream(llm, eog: list[int], prompt: str, tokens: int) -> tuple[float, float, int]:
    """(time to first token s, streamed tokens/s, tokens) from llama-cpp-python in-process."""
    import numpy as np
    from llama_cpp import LogitsProcessorList

    def no_eos(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        logits[eog] = -np.inf
        return logits

    started = time.perf_counter()
    first, count = None, 0
    for chunk in llm.create_completion(
        prompt,
        max_tokens=tokens,
        stream=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        repeat_penalty=1.0,
        logits_processor=LogitsProcessorList([no_eos]),
    ):
        if chunk["choices"][0]["text"] and first is None:
            first = time.perf_counter()
        count += 1
    end = time.perf_counter()
    return first - started, (count - 1) / (end - first), count


def gateway_stream(
    client: "httpx.Client", uri: str, key: str, prompt: str, tokens: int
) -> tuple[float, float, int]:
    started = time.perf_counter()
    first, count = None, 0
    with client.stream(
        "POST",
        f"{uri}/v1/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"prompt": prompt, "max_tokens": tokens, "stream": True, "ignore_eos": True},
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"][0]["text"]:
                first = first or time.perf_counter()
                count += 1
    end = time.perf_counter()
    return first - started, (count - 1) / (end - first), count


@dataclass
class Sweep:
    tokens_per_s: float
    ttfts: list[float]  # seconds, one per stream
    errors: int


async def sweep(url: str, headers: dict[str, str], extra: dict, n: int) -> Sweep:
    """n streamed chats sent at once: total completion tokens over the wall time, and each
    stream's time to its first content."""
    import httpx

    body = {
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "max_tokens": SWEEP_TOKENS,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        **extra,
    }

    async def one(client: httpx.AsyncClient) -> tuple[int, float | None]:
        started = time.perf_counter()
        first, used = None, 0
        try:
            async with client.stream("POST", url, headers=headers, json=body) as r:
                if r.status_code != 200:
                    return -1, None
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        used = chunk["usage"]["completion_tokens"]
                    choices = chunk.get("choices") or [{}]
                    if first is None and (choices[0].get("delta") or {}).get("content"):
                        first = time.perf_counter() - started
        except httpx.HTTPError:
            return -1, None
        return used, first

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(one(client) for _ in range(n)))
        elapsed = time.perf_counter() - started
    good = [(used, first) for used, first in results if used > 0 and first is not None]
    return Sweep(
        tokens_per_s=sum(used for used, _ in good) / elapsed,
        ttfts=[first for _, first in good],
        errors=n - len(good),
    )


# Streams that end in the same decode step (the replica took them in together, once slots
# came free) reach the client in whatever order its event loop reads their sockets: within this
# much of each other they count as finishing together. A decode step takes 9 ms or more.
SAME_STEP_S = 0.005


async def arrival_order(uri: str, key: str, n: int, tokens: int) -> tuple[int, int, float]:
    """n streams sent 20 ms apart: (errors, streams that finished a step or more before one
    that arrived earlier, chunks/s)."""
    import httpx

    finished: dict[int, float] = {}
    errors = 0

    async def one(client: httpx.AsyncClient, i: int) -> int:
        nonlocal errors
        got = 0
        try:
            async with client.stream(
                "POST",
                f"{uri}/v1/completions",
                headers={"Authorization": f"Bearer {key}"},
                json={"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": tokens, "stream": True},
            ) as r:
                if r.status_code != 200:
                    errors += 1
                    return 0
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        got += 1
                    elif line == "data: [DONE]":
                        finished[i] = time.perf_counter()
        except httpx.HTTPError:
            errors += 1
        return got

    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(one(client, i)))
            await asyncio.sleep(0.02)  # a defined arrival order
        chunks = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    out_of_order = sum(
        1
        for j, done in finished.items()
        if any(finished[i] > done + SAME_STEP_S for i in finished if i < j)
    )
    return errors + (n - len(finished)), out_of_order, sum(chunks) / elapsed


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the nearest ranks (q in 0..1)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="Passes over the 5 prompts.")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument(
        "--sweep-rounds", type=int, default=5, help="Runs per concurrency and server."
    )
    args = parser.parse_args()

    port = free_port()
    setup_django(port)
    dep = deploy()
    binary = llama_server_binary()  # before the runtime starts: a first build takes minutes
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runtime", "--port", str(port), "--interval", "0.5"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ours_headers = {"Authorization": f"Bearer {dep.key}"}
    sweeps: dict[tuple[str, int], list[Sweep]] = {}
    try:
        wait_ready(dep.uri, dep.key, proc)
        import httpx
        from llama_cpp import Llama, llama_cpp

        from opsportal.runtime.control import machine_cores
        from opsportal.runtime.engine import resolve_model_path

        threads = machine_cores()
        llm = Llama(
            model_path=str(resolve_model_path(dep.model_path)),
            n_ctx=dep.n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        eog = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t)]
        # One client for the run, as a real caller keeps its connection (a new httpx client
        # per request costs milliseconds of its own, mostly building an SSL context).
        client = httpx.Client(timeout=120)
        direct_stream(llm, eog, "warm up", 8)
        gateway_stream(client, dep.uri, dep.key, "warm up", 8)

        results: dict[str, list[tuple[float, float, int]]] = {"direct": [], "gateway": []}
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                results["direct"].append(direct_stream(llm, eog, prompt, args.tokens))
                results["gateway"].append(
                    gateway_stream(client, dep.uri, dep.key, prompt, args.tokens)
                )

        peer_port = free_port()
        peer = start_llama_server(binary, dep, threads, peer_port)
        peer_url = f"http://127.0.0.1:{peer_port}/v1/chat/completions"
        ours_url = f"{dep.uri}/v1/chat/completions"
        targets = {
            "peer": (peer_url, {}, {"stream_options": {"include_usage": True}}),
            "ours": (ours_url, ours_headers, {}),
        }
        try:
            for url, headers, extra in targets.values():
                asyncio.run(sweep(url, headers, extra, 2))  # warm both
            for n in CONCURRENCY:
                for i in range(args.sweep_rounds):
                    # Who goes first alternates too: neither always runs on a warmer machine.
                    for name in ["peer", "ours"] if i % 2 == 0 else ["ours", "peer"]:
                        url, headers, extra = targets[name]
                        sweeps.setdefault((name, n), []).append(
                            asyncio.run(sweep(url, headers, extra, n))
                        )
        finally:
            peer.terminate()
            peer.wait(timeout=20)

        errors, out_of_order, conc_tps = asyncio.run(
            arrival_order(dep.uri, dep.key, args.streams, 32)
        )
        # Again alternating with the engine directly: on a shared machine its speed says how
        # much of a difference is the machine's.
        after: dict[str, list[tuple[float, float, int]]] = {"direct": [], "gateway": []}
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                after["direct"].append(direct_stream(llm, eog, prompt, args.tokens))
                after["gateway"].append(
                    gateway_stream(client, dep.uri, dep.key, prompt, args.tokens)
                )
        del llm
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    def p50(rows: list[tuple[float, float, int]], i: int) -> float:
        return statistics.median(r[i] for r in rows)

    d_ttft, g_ttft = p50(results["direct"], 0) * 1000, p50(results["gateway"], 0) * 1000
    d_tps, g_tps = p50(results["direct"], 1), p50(results["gateway"], 1)
    after_tps, after_direct_tps = p50(after["gateway"], 1), p50(after["direct"], 1)
    # The gateway's share of the direct engine's speed, after the load over before it.
    after_ratio = (after_tps / after_direct_tps) / (g_tps / d_tps)
    metrics: dict[str, float] = {
        "direct_ttft_p50_ms": round(d_ttft, 2),
        "gateway_ttft_p50_ms": round(g_ttft, 2),
        "added_ttft_p50_ms": round(g_ttft - d_ttft, 2),
        "direct_stream_tokens_per_s": round(d_tps, 2),
        "gateway_stream_tokens_per_s": round(g_tps, 2),
        "gateway_to_direct_tokens_per_s_ratio": round(g_tps / d_tps, 4),
    }
    print(
        f"SmolLM2-135M, {threads} threads, {dep.slots} slots of {dep.n_ctx} tokens; "
        f"{len(results['direct'])} single streams of {args.tokens} tokens each way, alternating"
    )
    print(f"{'path':28} {'TTFT p50 ms':>12} {'tokens/s p50':>13}")
    print(f"{'engine directly':28} {d_ttft:12.1f} {d_tps:13.1f}")
    print(f"{'through the gateway (HTTP)':28} {g_ttft:12.1f} {g_tps:13.1f}")
    print(f"gateway/direct tokens/s ratio: {g_tps / d_tps:.3f}")
    print()
    print(
        f"Concurrent streamed chats, {SWEEP_TOKENS} tokens each, greedy, same prompt; median "
        f"of {args.sweep_rounds} runs each, alternating; llama-server --parallel {dep.slots}"
    )
    print(
        f"{'streams':>7} {'llama-server tok/s':>19} {'ours tok/s':>11} {'ratio':>6} "
        f"{'TTFT p50/p95 ms llama-server':>29} {'ours':>15}"
    )
    ratios = []
    for n in CONCURRENCY:
        row = {}
        for name in ("peer", "ours"):
            runs = sweeps[(name, n)]
            ttfts = [t * 1000 for s in runs for t in s.ttfts]
            row[name] = (
                statistics.median(s.tokens_per_s for s in runs),
                percentile(ttfts, 0.5),
                percentile(ttfts, 0.95),
                sum(s.errors for s in runs),
            )
            tps, t50, t95, errs = row[name]
            metrics[f"{name}_c{n}_tokens_per_s"] = round(tps, 2)
            metrics[f"{name}_c{n}_ttft_p50_ms"] = round(t50, 2)
            metrics[f"{name}_c{n}_ttft_p95_ms"] = round(t95, 2)
            metrics[f"{name}_c{n}_errors"] = errs
        ratio = row["ours"][0] / row["peer"][0]
        ratios.append(ratio)
        metrics[f"ours_to_peer_c{n}_tokens_per_s_ratio"] = round(ratio, 4)
        print(
            f"{n:>7} {row['peer'][0]:>19.1f} {row['ours'][0]:>11.1f} {ratio:>6.2f} "
            f"{row['peer'][1]:>14.0f} / {row['peer'][2]:<12.0f} "
            f"{row['ours'][1]:>7.0f} / {row['ours'][2]:<7.0f}"
        )
    metrics["ours_to_peer_min_tokens_per_s_ratio"] = round(min(ratios), 4)
    print()
    print(
        f"{args.streams} streams arriving 20 ms apart: {errors} errors, "
        f"{out_of_order} finished a step or more before an earlier one, "
        f"{conc_tps:.1f} chunks/s overall"
    )
    print(
        f"single stream through the gateway after the concurrent runs: {after_tps:.1f} tokens/s "
        f"({after_tps / g_tps:.3f} of before; engine directly {after_direct_tps:.1f}, "
        f"{after_direct_tps / d_tps:.3f} of before); gateway/direct after over before: "
        f"{after_ratio:.3f}"
    )
    metrics.update(
        {
            "concurrent_streams_errors": errors,
            "concurrent_out_of_order_errors": out_of_order,
            "concurrent_chunks_per_s": round(conc_tps, 2),
            "gateway_after_load_tokens_per_s": round(after_tps, 2),
            "direct_after_load_tokens_per_s": round(after_direct_tps, 2),
            "after_load_to_before_tokens_per_s_ratio": round(after_tps / g_tps, 4),
            "after_load_to_before_gateway_to_direct_ratio": round(after_ratio, 4),
        }
    )
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
