"""Helper for ``tests/test_lora_kernels_e2e.py`` (not a test module): one offline vLLM engine with LoRA, greedy
completions for base-only, adapter-only and mixed batches, printed as one JSON line on stdout.

Run in a subprocess per engine, so that each engine (and the ``LLMAAS_LORA_KERNELS`` choice its plugin reads in
vLLM's spawned processes) starts from a clean process::

    LLMAAS_LORA_KERNELS=llmaas python tests/lora_engine_run.py MODEL_DIR ADAPTER_DIR [--max-loras N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

RESULT_PREFIX = "LORA_ENGINE_RESULT "
PROMPTS = (
    "What is the largest planet?",
    "Tell me about dogs.",
    "How do I boil an egg?",
    "What is a computer?",
)
MAX_TOKENS = 24


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("adapter_dir", type=Path)
    parser.add_argument("--max-loras", type=int, default=2)
    parser.add_argument("--dtype", default="auto", help="auto: the dtype this machine serves")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    rank = json.loads((args.adapter_dir / "adapter_config.json").read_text())["r"]

    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from engine.hardware import detect, resolve_dtype

    tokenizer = AutoTokenizer.from_pretrained(str(args.model_dir))
    prompts = [
        TokensPrompt(
            prompt_token_ids=tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=False
            )
        )
        for text in PROMPTS
    ]
    llm = LLM(
        model=str(args.model_dir),
        enable_lora=True,
        max_lora_rank=max(8, rank),
        max_loras=args.max_loras,
        enforce_eager=True,
        dtype=resolve_dtype(args.dtype, detect()),
        max_model_len=1024,
        seed=0,
    )
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    adapter = LoRARequest("pirate", 1, str(args.adapter_dir))

    def run(batch: list[TokensPrompt], loras: list[LoRARequest | None]) -> list[list[int]]:
        outputs = llm.generate(batch, params, lora_request=loras, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]

    n = len(prompts)
    result = {
        "base": run(prompts, [None] * n),
        "adapter": run(prompts, [adapter] * n),
        # Both kinds of rows in every prefill and decode step.
        "mixed": run(prompts + prompts, [None] * n + [adapter] * n),
    }
    result["text"] = {key: [tokenizer.decode(ids) for ids in result[key]] for key in ("base", "adapter")}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
