"""An instant stand-in for a vLLM OpenAI server, for the proxy-overhead benchmark and for tests of the
upstream backend's routing, adapter loading and failover without loading a model.

It speaks the parts of vLLM's API the gateway uses: ``/health``, ``/metrics`` (vLLM's names, with
``vllm:lora_requests_info``), ``/v1/models`` (the base model and loaded adapters with their ``parent``),
``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``, and streamed ``/v1/completions`` on token ids with
``return_token_ids`` and a usage chunk. It answers each completion with ``max_tokens`` tokens of ``x`` and
counts what it served at ``/stats`` (per model, and per prompt head: a hash of its first ``HEAD_TOKENS`` tokens,
to tell where each prefix went). A plain ASGI app on uvicorn: as little of its own cost as possible.

    python bench/fake_upstream.py --port 9001 --model smollm2-135m-instruct --root /path/to/model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

Send = Any
Receive = Any

TOKEN_ID = 87
"""The token it "generates" (any id the gateway's tokenizer knows)."""
HEAD_TOKENS = 64


class FakeUpstream:
    def __init__(
        self, model: str, root: str, max_model_len: int, max_loras: int, seconds_per_token: float, block_size: int
    ) -> None:
        self.model = model
        self.block_size = block_size
        self.root = root
        self.max_model_len = max_model_len
        self.max_loras = max_loras
        self.seconds_per_token = seconds_per_token
        self.adapters: dict[str, str] = {}
        self.running: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.loads = 0
        self.started = time.time()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if method == "POST" and path == "/v1/completions":
            await self.complete(json.loads(body), send)
        elif method == "GET" and path == "/health":
            await _reply(send, 200, b"", "text/plain")
        elif method == "GET" and path == "/metrics":
            await _reply(send, 200, self.metrics().encode(), "text/plain; version=0.0.4")
        elif method == "GET" and path == "/v1/models":
            await _json(send, 200, self.models())
        elif method == "GET" and path == "/stats":
            await _json(
                send,
                200,
                {
                    "served": dict(self.served),
                    "heads": dict(self.heads),
                    "adapters": list(self.adapters),
                    "loads": self.loads,
                },
            )
        elif method == "POST" and path == "/v1/load_lora_adapter":
            request = json.loads(body)
            if request["lora_name"] in self.adapters:
                await _json(send, 400, _error(f"The lora adapter '{request['lora_name']}' has already been loaded."))
                return
            self.adapters[request["lora_name"]] = request["lora_path"]
            self.loads += 1
            await _reply(send, 200, f"Success: LoRA adapter '{request['lora_name']}' added successfully.".encode())
        elif method == "POST" and path == "/v1/unload_lora_adapter":
            name = json.loads(body)["lora_name"]
            if self.adapters.pop(name, None) is None:
                await _json(send, 404, _error(f"The lora adapter '{name}' cannot be found."))
                return
            await _reply(send, 200, f"Success: LoRA adapter '{name}' removed successfully.".encode())
        else:
            await _json(send, 404, _error("not found"))

    def models(self) -> dict[str, Any]:
        base = {"id": self.model, "object": "model", "root": self.root, "parent": None}
        base["max_model_len"] = self.max_model_len
        cards = [base] + [
            {"id": name, "object": "model", "root": path, "parent": self.model} for name, path in self.adapters.items()
        ]
        return {"object": "list", "data": cards}

    def metrics(self) -> str:
        running = sum(self.running.values())
        adapters = ",".join(name for name, count in self.running.items() if count and name != self.model)
        labels = f'max_lora="{self.max_loras}",running_lora_adapters="{adapters}",waiting_lora_adapters=""'
        return (
            f"# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {self.started}\n"
            f'# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{{block_size="{self.block_size}"}} 1.0\n'
            f'# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{engine="0"}} {running}\n'
            f'# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{engine="0"}} 0\n'
            f'# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{engine="0"}} 0.0\n'
            f"# TYPE vllm:lora_requests_info gauge\nvllm:lora_requests_info{{{labels}}} {time.time()}\n"
        )

    async def complete(self, request: dict[str, Any], send: Send) -> None:
        model = request["model"]
        if model != self.model and model not in self.adapters:
            await _json(send, 404, _error(f"The model `{model}` does not exist."))
            return
        prompt = request["prompt"]
        n, max_tokens = request.get("n", 1), request["max_tokens"]
        self.served[model] += 1
        self.heads[f"{hash(tuple(prompt[:HEAD_TOKENS])):x}"] += 1
        self.running[model] += 1
        try:
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            for step in range(max_tokens):
                if self.seconds_per_token:
                    await asyncio.sleep(self.seconds_per_token)
                finish = "length" if step == max_tokens - 1 else None
                choices = [
                    {"index": i, "text": "x", "token_ids": [TOKEN_ID], "finish_reason": finish, "logprobs": None}
                    for i in range(n)
                ]
                await _event(send, {"id": "cmpl-fake", "object": "text_completion", "model": model, "choices": choices})
            usage = {"prompt_tokens": len(prompt), "completion_tokens": n * max_tokens}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            await _event(
                send, {"id": "cmpl-fake", "object": "text_completion", "model": model, "choices": [], "usage": usage}
            )
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        finally:
            self.running[model] -= 1


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}


async def _event(send: Send, data: dict[str, Any]) -> None:
    await send(
        {"type": "http.response.body", "body": b"data: " + json.dumps(data).encode() + b"\n\n", "more_body": True}
    )


async def _reply(send: Send, status: int, body: bytes, content_type: str = "text/plain") -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, data: dict[str, Any]) -> None:
    await _reply(send, status, json.dumps(data).encode(), "application/json")


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--root", required=True, help="The model dir the gateway reads the tokenizer from.")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--max-loras", type=int, default=2)
    parser.add_argument("--seconds-per-token", type=float, default=0.0)
    parser.add_argument("--block-size", type=int, default=128, help="The KV block size it reports (vLLM's on CPU).")
    args = parser.parse_args()
    app = FakeUpstream(
        args.model, args.root, args.max_model_len, args.max_loras, args.seconds_per_token, args.block_size
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
