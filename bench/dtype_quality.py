"""Does the default dtype cost the default model its quality on this CPU? The served model (vLLM, as we run it)
scores a fixed English text (perplexity from its prompt logprobs) and answers short factual questions greedily,
once per dtype; the table shows perplexity, answers correct and agreement with fp32, beside the machine.

    .venv/bin/python bench/dtype_quality.py [--model-dir DIR] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe, machine
from engine.kernels.vllm_plugin import INT8_MAX_ROWS_ENV, QUANTIZATION_ENV, QUANTIZATION_METHOD
from engine.model_prep import prepare_default_model
from engine.settings import EngineSettings

TEXT = (
    "The water cycle describes how water moves between the oceans, the air and the land. Heat from the sun "
    "evaporates water from the surface of the sea, and the vapour rises until it cools and condenses into clouds. "
    "When the droplets in a cloud grow heavy enough they fall as rain or snow. Some of that water flows over the "
    "ground into rivers and lakes, some soaks into the soil and becomes groundwater, and plants take up some of it "
    "through their roots and release it from their leaves. In time almost all of it returns to the ocean, and the "
    "cycle begins again. Because the cycle moves heat as well as water, it shapes the weather and the climate of "
    "every region on Earth."
)
QUESTIONS = {
    "What is the capital of France?": "paris",
    "What is the capital of Japan?": "tokyo",
    "What is the capital of Italy?": "rome",
    "What is the largest planet in the solar system?": "jupiter",
    "What color is the sky on a clear day?": "blue",
    "How many days are there in a week?": "seven|7",
    "What is the freezing point of water in degrees Celsius?": "0|zero",
    "Which animal is known as the king of the jungle?": "lion",
    "What is the opposite of hot?": "cold",
    "Who wrote Romeo and Juliet?": "shakespeare",
}


Scores = tuple[float, list[str], float]
"""Perplexity on ``TEXT``, the greedy answers to ``QUESTIONS``, output tok/s answering them."""


def score(model_dir: Path, dtype: str, quantization: str = "none") -> Scores:
    """The served model's scores in ``dtype``, with its weights as ``EngineSettings.quantization`` says: int8 (or
    w8a8) for every layer call, unless ``LLMAAS_INT8_MAX_ROWS`` is set. The perplexity comes from a prompt's
    prefill, which a server runs on the float weights past its int8 rows: scored so, int8 would score as fp32."""
    from vllm import LLM, SamplingParams

    os.environ[QUANTIZATION_ENV] = quantization  # read by our llmaas_int8 method in vLLM's engine process
    rows = os.environ.get(INT8_MAX_ROWS_ENV)
    os.environ[INT8_MAX_ROWS_ENV] = rows or "0"  # read once, as the engine loads the model
    extra = {} if quantization == "none" else {"quantization": QUANTIZATION_METHOD}
    try:
        llm = LLM(model=str(model_dir), dtype=dtype, enforce_eager=True, max_model_len=2048, seed=0, **extra)
    finally:
        if rows is None:
            del os.environ[INT8_MAX_ROWS_ENV]
    tokenizer = llm.get_tokenizer()
    scored = llm.generate([TEXT], SamplingParams(max_tokens=1, prompt_logprobs=0))[0]
    ids = scored.prompt_token_ids or []
    logprobs = [
        entry[token].logprob for token, entry in zip(ids[1:], (scored.prompt_logprobs or [])[1:], strict=True) if entry
    ]
    perplexity = math.exp(-sum(logprobs) / len(logprobs))
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in QUESTIONS
    ]
    started = time.perf_counter()
    outputs = llm.generate(prompts, SamplingParams(max_tokens=24, temperature=0.0))
    seconds = time.perf_counter() - started
    answers = [output.outputs[0].text.strip().replace("\n", " ") for output in outputs]
    tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
    del llm
    return perplexity, answers, tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model_dir = args.model_dir or prepare_default_model(EngineSettings())
    facts = machine()
    results = {dtype: score(model_dir, dtype) for dtype in args.dtypes.split(",")}
    print(f"\nmachine: {describe(facts)}")
    report(results, "dtype")


def report(results: dict[str, Scores], label: str) -> None:
    """The table (one row per variant, the first one the reference) and every answer."""
    reference = next(iter(results.values()))[1]
    print(
        f"| {label} | perplexity (fixed text) | questions right | answers equal to {next(iter(results))} | "
        "tok/s (10 at once) |"
    )
    print("|---|---|---|---|---|")
    for variant, (perplexity, answers, speed) in results.items():
        right = sum(
            any(word in answer.lower() for word in expected.split("|"))
            for answer, expected in zip(answers, QUESTIONS.values(), strict=True)
        )
        same = sum(a == b for a, b in zip(answers, reference, strict=True))
        print(f"| {variant} | {perplexity:.2f} | {right}/{len(QUESTIONS)} | {same}/{len(QUESTIONS)} | {speed:.0f} |")
    for variant, (_, answers, _) in results.items():
        print(f"\n{variant}:")
        for question, answer in zip(QUESTIONS, answers, strict=True):
            print(f"  {question} -> {answer[:80]}")


if __name__ == "__main__":
    main()
