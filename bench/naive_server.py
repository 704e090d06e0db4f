"""The naive baseline: the OpenAI-style chat server a tutorial would write with FastAPI and transformers.

Deliberately naive, it is the baseline that ``bench/serving_compare.py`` measures our gateway against:
every request runs its own ``model.generate`` (no batching across requests, no paged KV cache, no
scheduler), streamed through a ``TextIteratorStreamer`` filled by a thread per request. The weights are
loaded in ``--dtype``: the benchmark passes the dtype our gateway chose for this CPU, so that all servers
compute alike.

Only what the benchmark needs: ``POST /v1/chat/completions`` (``stream`` true or false, ``max_tokens``,
``temperature``, ``top_p``, ``stream_options.include_usage`` and vLLM's ``ignore_eos`` extension, done
with ``min_new_tokens=max_tokens``), ``GET /v1/models`` and ``GET /health``.

    .venv/bin/python bench/naive_server.py --model .data/models/smollm2-135m-instruct --port 8100
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer


class Message(BaseModel):
    role: str
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[Message]
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False


def create_app(model_dir: Path, model_id: str, dtype: str) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    model.eval()
    app = FastAPI(title="naive transformers server")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "naive"}]}

    @app.post("/v1/chat/completions", response_model=None)
    def chat(body: ChatRequest) -> dict[str, Any] | StreamingResponse:
        inputs = tokenizer.apply_chat_template(
            [m.model_dump() for m in body.messages],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        prompt_tokens = int(inputs["input_ids"].shape[1])
        gen_kwargs: dict[str, Any] = {
            **inputs,
            "max_new_tokens": body.max_tokens,
            "pad_token_id": tokenizer.eos_token_id,
        }
        if body.ignore_eos:
            gen_kwargs["min_new_tokens"] = body.max_tokens
        if body.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=body.temperature, top_p=body.top_p)
        else:
            gen_kwargs["do_sample"] = False
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def usage(completion_tokens: int) -> dict[str, int]:
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }

        def finish_reason(completion_tokens: int) -> str:
            return "length" if completion_tokens >= body.max_tokens else "stop"

        if not body.stream:
            with torch.no_grad():
                output = model.generate(**gen_kwargs)
            new_tokens = output[0, prompt_tokens:]
            n = int(new_tokens.shape[0])
            return {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model_id,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": tokenizer.decode(new_tokens, skip_special_tokens=True),
                        },
                        "finish_reason": finish_reason(n),
                    }
                ],
                "usage": usage(n),
            }

        # The tutorial way: generate() fills the streamer from a thread, the response drains it.
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, int] = {}

        def run_generate() -> None:
            with torch.no_grad():
                output = model.generate(**gen_kwargs, streamer=streamer)
            result["completion_tokens"] = int(output.shape[1]) - prompt_tokens

        thread = threading.Thread(target=run_generate, daemon=True)
        thread.start()
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(delta: dict[str, Any], finish: str | None) -> str:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if include_usage:
                payload["usage"] = None
            return f"data: {json.dumps(payload)}\n\n"

        def events() -> Iterator[str]:
            yield chunk({"role": "assistant", "content": ""}, None)
            for text in streamer:
                if text:
                    yield chunk({"content": text}, None)
            thread.join()
            n = result.get("completion_tokens", 0)
            yield chunk({}, finish_reason(n))
            if include_usage:
                final = {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model_id,
                    "choices": [],
                    "usage": usage(n),
                }
                yield f"data: {json.dumps(final)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="A Hugging Face model dir.")
    parser.add_argument("--served-model-name", default="smollm2-135m-instruct")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="float32")
    args = parser.parse_args()
    uvicorn.run(create_app(args.model, args.served_model_name, args.dtype), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
