#!/usr/bin/env python
"""Streaming through the local gateway versus calling the engine directly.

Same run, same prompts, alternating A/B: each prompt is streamed by llama-cpp-python in this
process (the engine, called directly) and through the gateway over HTTP (a separate runtime
process, as `make run` starts it), 128 tokens each with end-of-generation ignored so both do the
same work. Then 16 streams are sent to the gateway at once: every one must succeed, and they
must finish in the order they arrived (the replica queue is first come, first served).

It makes its own database and endpoint under var/bench/. Prints a table, then one JSON line.

    python bench/gateway.py [--rounds 3] [--tokens 128]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_django(port: int) -> None:
    _venv.django_on_own_database(VAR, "gateway.sqlite3", OPSPORTAL_RUNTIME_PORT=str(port))


def deploy() -> tuple[str, str, str]:
    from django.core.management import call_command

    from opsportal.inventory.models import Endpoint
    from opsportal.inventory.services import local_workspace_ensure
    from opsportal.providers import for_workspace

    call_command("migrate", verbosity=0)
    provider = for_workspace(local_workspace_ensure())
    Endpoint.objects.filter(name="bench-gateway").delete()
    provider.subscription_create(offering_slug="smollm2-135m-instruct")
    info = provider.endpoint_create(
        name="bench-gateway", kind="serverless", offering_slug="smollm2-135m-instruct"
    )
    model = provider._offering("smollm2-135m-instruct").local_model_path
    return info.scoring_uri, provider.keys_get(name="bench-gateway").primary, model


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


async def concurrent(uri: str, key: str, n: int, tokens: int) -> tuple[int, int, float, float]:
    import httpx

    finished: list[int] = []
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
                        finished.append(i)
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
    out_of_order = sum(1 for a, b in zip(finished, sorted(finished), strict=False) if a != b)
    return errors + (n - len(finished)), out_of_order, sum(chunks) / elapsed, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="Passes over the 5 prompts.")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=16)
    args = parser.parse_args()

    port = free_port()
    setup_django(port)
    uri, key, model_path = deploy()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runtime", "--port", str(port), "--interval", "0.5"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(uri, key, proc)
        import httpx
        from llama_cpp import Llama, llama_cpp

        from opsportal.runtime.control import SERVERLESS_MAX_CTX, machine_cores
        from opsportal.runtime.engine import resolve_model_path

        llm = Llama(
            model_path=str(resolve_model_path(model_path)),
            n_ctx=SERVERLESS_MAX_CTX,
            n_threads=machine_cores(),
            n_threads_batch=machine_cores(),
            verbose=False,
        )
        eog = [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t)]
        # One client for the run, as a real caller keeps its connection (a new httpx client
        # per request costs milliseconds of its own, mostly building an SSL context).
        client = httpx.Client(timeout=120)
        direct_stream(llm, eog, "warm up", 8)
        gateway_stream(client, uri, key, "warm up", 8)

        results: dict[str, list[tuple[float, float, int]]] = {"direct": [], "gateway": []}
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                results["direct"].append(direct_stream(llm, eog, prompt, args.tokens))
                results["gateway"].append(gateway_stream(client, uri, key, prompt, args.tokens))
        del llm
        errors, out_of_order, conc_tps, conc_s = asyncio.run(concurrent(uri, key, args.streams, 32))
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    def p50(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in results[kind])

    d_ttft, g_ttft = p50("direct", 0) * 1000, p50("gateway", 0) * 1000
    d_tps, g_tps = p50("direct", 1), p50("gateway", 1)
    print(
        f"SmolLM2-135M, {len(results['direct'])} streams of {args.tokens} tokens each way, "
        "alternating"
    )
    print(f"{'path':28} {'TTFT p50 ms':>12} {'tokens/s p50':>13}")
    print(f"{'engine directly':28} {d_ttft:12.1f} {d_tps:13.1f}")
    print(f"{'through the gateway (HTTP)':28} {g_ttft:12.1f} {g_tps:13.1f}")
    print(f"gateway/direct tokens/s ratio: {g_tps / d_tps:.3f}")
    print(
        f"{args.streams} concurrent streams of 32 tokens: {errors} errors, "
        f"{out_of_order} finished out of arrival order, {conc_tps:.1f} chunks/s overall, "
        f"{conc_s:.1f} s"
    )
    print(
        json.dumps(
            {
                "direct_ttft_p50_ms": round(d_ttft, 2),
                "gateway_ttft_p50_ms": round(g_ttft, 2),
                "added_ttft_p50_ms": round(g_ttft - d_ttft, 2),
                "direct_stream_tokens_per_s": round(d_tps, 2),
                "gateway_stream_tokens_per_s": round(g_tps, 2),
                "gateway_to_direct_tokens_per_s_ratio": round(g_tps / d_tps, 4),
                "concurrent_streams_errors": errors,
                "concurrent_out_of_order_errors": out_of_order,
                "concurrent_chunks_per_s": round(conc_tps, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
