#!/usr/bin/env python
"""Time to first token and total time through the test-chat relay versus straight to the endpoint.

Same run, same prompts, alternating: each prompt is streamed directly from the local gateway
(as curl or the OpenAI SDK would) and through the portal (the browser's EventSource request to
the relay view, served by uvicorn, which adds the key and relays each chunk). Each turn is
created by the chat form's real POST (untimed), which also resolves where the turn goes and with
which key (opsportal.chat.grants); only the stream is timed.
Both clients keep their connection, as a browser and an SDK do. Every request has a prompt of
its own, so llama.cpp's prompt cache favours neither path.

It makes its own database, user and endpoint under var/bench/relay. Prints a table, then one
JSON line.

    python bench/relay.py [--rounds 4] [--tokens 64]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import _venv

ROOT = _venv.ROOT

import httpx  # noqa: E402  (after the switch to the project's environment)

from bench.gateway import PROMPTS, free_port  # noqa: E402

VAR = ROOT / "var" / "bench" / "relay"


def setup(runtime_port: int) -> None:
    _venv.django_on_own_database(VAR, "relay.sqlite3", OPSPORTAL_RUNTIME_PORT=str(runtime_port))


def prepare(instance_type: str = "") -> tuple[object, object, str, str]:
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command

    from opsportal.accounts.services import admin_user_ensure
    from opsportal.inventory.models import Endpoint
    from opsportal.inventory.services import local_workspace_ensure
    from opsportal.providers import for_workspace

    call_command("migrate", verbosity=0)
    workspace = local_workspace_ensure()
    user, _ = admin_user_ensure(email="bench@example.com", password=None, team=workspace.team)
    Endpoint.objects.filter(name="bench-relay").delete()
    provider = for_workspace(workspace)
    provider.subscription_create(offering_slug="smollm2-135m-instruct")
    if instance_type:
        # A managed deployment: the engine gets that instance type's threads (Local_1T_2K: one,
        # leaving a core to the relay and the clients).
        provider.endpoint_create(
            name="bench-relay", kind="managed", offering_slug="smollm2-135m-instruct"
        )
        provider.deployment_create(
            endpoint_name="bench-relay",
            name="bench",
            instance_type=instance_type,
            instance_count=1,
            traffic_percent=100,
        )
    else:
        provider.endpoint_create(
            name="bench-relay", kind="serverless", offering_slug="smollm2-135m-instruct"
        )
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    key = provider.keys_get(name="bench-relay").primary
    return user, Endpoint.objects.get(name="bench-relay"), session.session_key, key


def wait_http(url: str, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                sys.exit(f"A server exited with code {proc.returncode}.")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    sys.exit(f"{url} did not answer in 120 s.")


def direct(client, uri: str, key: str, body: dict) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    first = None
    with client.stream(
        "POST", f"{uri}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {") and '"content"' in line:
                first = time.perf_counter()
            if line == "data: [DONE]":
                break
    return first - started, time.perf_counter() - started


def relayed(client, url: str) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    first = None
    with client.stream("GET", url) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first is None and line.startswith("data: {") and '"content":"' in line:
                first = time.perf_counter()
            if line == "event: done":
                break
    return first - started, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="Passes over the 5 prompts.")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--instance-type",
        default="",
        help="Serve from a managed deployment of this local instance type (e.g. Local_1T_2K) "
        "instead of the serverless endpoint, whose engine uses every core.",
    )
    args = parser.parse_args()

    runtime_port, web_port = free_port(), free_port()
    setup(runtime_port)
    user, endpoint, session_key, key = prepare(args.instance_type)
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "runtime", "--port", str(runtime_port)],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "opsportal.asgi:application",
                "--port",
                str(web_port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        import httpx

        from opsportal.chat.models import ChatTurn

        wait_http(f"http://127.0.0.1:{web_port}/healthz", procs)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            endpoint.refresh_from_db()
            if endpoint.provisioning_state == "Succeeded":
                break
            time.sleep(0.3)
        uri = endpoint.scoring_uri
        api = httpx.Client(timeout=120)
        browser = httpx.Client(timeout=120, cookies={"sessionid": session_key})

        def body(prompt: str) -> dict:
            return {
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": args.tokens,
                "ignore_eos": True,
                "stream": True,
            }

        # The chat form's POST, as the browser sends it (untimed): it creates the turn and,
        # in the web process, resolves where the turn goes.
        page = browser.get(f"http://127.0.0.1:{web_port}/endpoints/{endpoint.pk}/?tab=chat")
        page.raise_for_status()
        csrf = browser.cookies["csrftoken"]

        checked = {"last": None, "errors": 0}

        def check_last() -> None:
            if checked["last"] is not None:
                status = ChatTurn.objects.get(pk=checked["last"]).status
                checked["errors"] += status != "done"

        def turn_url(prompt: str) -> str:
            check_last()
            # A fresh conversation each time, so both paths send the same single message.
            browser.post(
                f"http://127.0.0.1:{web_port}/endpoints/{endpoint.pk}/chat/clear/",
                headers={"X-CSRFToken": csrf, "HX-Request": "true"},
            ).raise_for_status()
            response = browser.post(
                f"http://127.0.0.1:{web_port}/endpoints/{endpoint.pk}/chat/",
                data={
                    "mode": "chat",
                    "route_style": "native",
                    "message": prompt,
                    "max_tokens": str(args.tokens),
                    "ignore_eos": "true",
                },
                headers={"X-CSRFToken": csrf, "HX-Request": "true"},
            )
            response.raise_for_status()
            turn = ChatTurn.objects.filter(user=user, prompt=prompt).latest("pk")
            assert turn.request_body == body(prompt), turn.request_body
            checked["last"] = turn.pk
            return f"http://127.0.0.1:{web_port}/chat/turns/{turn.pk}/stream/"

        direct(api, uri, key, body("warm up"))
        relayed(browser, turn_url("warm up"))
        results: dict[str, list[tuple[float, float]]] = {"direct": [], "relay": []}
        n = 0
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                # A unique opening per request: llama.cpp reuses the KV cache of a repeated
                # prompt, which would favour whichever path went second.
                n += 1
                results["direct"].append(direct(api, uri, key, body(f"[{n}a] {prompt}")))
                results["relay"].append(relayed(browser, turn_url(f"[{n}b] {prompt}")))
        check_last()
        errors = checked["errors"]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)

    def p50(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in results[kind]) * 1000

    d_ttft, r_ttft, d_total, r_total = (
        p50("direct", 0),
        p50("relay", 0),
        p50("direct", 1),
        p50("relay", 1),
    )
    print(
        f"SmolLM2-135M ({args.instance_type or 'serverless, all cores'}), "
        f"{len(results['direct'])} chats of {args.tokens} tokens each way, "
        "alternating"
    )
    print(f"{'path':34} {'TTFT p50 ms':>12} {'total p50 ms':>13}")
    print(f"{'straight to the endpoint':34} {d_ttft:12.1f} {d_total:13.1f}")
    print(f"{'through the portal relay (SSE)':34} {r_ttft:12.1f} {r_total:13.1f}")
    print(f"added: TTFT {r_ttft - d_ttft:+.2f} ms, total {100 * (r_total / d_total - 1):+.2f} %")
    print(
        json.dumps(
            {
                "direct_ttft_p50_ms": round(d_ttft, 2),
                "relay_ttft_p50_ms": round(r_ttft, 2),
                "added_ttft_p50_ms": round(r_ttft - d_ttft, 2),
                "direct_total_p50_ms": round(d_total, 2),
                "relay_total_p50_ms": round(r_total, 2),
                "relay_to_direct_total_ratio": round(r_total / d_total, 4),
                "relay_errors": errors,
            }
        )
    )


if __name__ == "__main__":
    main()
