"""LoRA on the CPU engine: a LoRA-disabled engine vs LoRA-enabled with vLLM's own ops vs with our C++ kernels.

Run it (on a quiet machine: the engines take turns on its cores and share them with nothing else)::

    .venv/bin/python bench/lora_kernels.py

Three offline vLLM engines (``LLM.generate``), each in a subprocess of its own so that our vLLM plugin reads its
``LLMAAS_LORA_KERNELS`` choice there:

* ``off``: LoRA disabled;
* ``vllm``: LoRA enabled, vLLM's own CPU LoRA ops (``LLMAAS_LORA_KERNELS=vllm``);
* ``llmaas``: LoRA enabled, our kernels (``engine/kernels/``, ``LLMAAS_LORA_KERNELS=llmaas``).

All use our engine defaults (``engine/settings.py``: bf16, max_model_len 2048, max_num_seqs 64, enforce_eager,
seed 0, 2 GiB KV cache; with LoRA: max_loras 4, max_lora_rank 16). Each loads ``--prompts`` distinct chat
prompts at once, greedy with ``ignore_eos`` and ``--max-tokens`` output tokens each, for three workloads: base
requests only, every request on 1 adapter, and requests spread round-robin over 4 adapters (the LoRA-disabled
engine runs base only). The adapters are random rank-8 peft adapters on every projection (q/k/v/o, gate/up/down)
with non-zero B, made once into ``--results-dir``: speed does not depend on what they learned.

How it measures, so that one run can be trusted on a small shared machine whose speed drifts by 10-20 % over
minutes: all engines are started before any measurement and stay up side by side (an idle one sleeps). Then
``--repeats`` rounds each run every workload of the LoRA-enabled engines once (the order rotates between rounds),
one at a time, each between two runs of the LoRA-disabled engine's base workload: its ratio is taken to the mean
of the two runs around it, so that the machine's drift cancels out of the ratio. The table shows the median over
rounds of the tok/s and of those ratios.

Two topologies: by default each engine is what ``LLM(...)`` builds, as vLLM (and our gateway's ``AsyncLLM``)
runs it: a front-end process, an engine-core process and a worker process, which on two cores busy-poll beside
the one that computes (a fixed share of every step that dilutes any ratio). ``--in-process`` runs each engine
inside its subprocess (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): the numbers are the engine's own compute, the
strictest ratio. Everything is also written to ``lora_kernels.json`` (or ``lora_kernels-in-process.json``).
ratios. Everything is also written to ``lora_kernels.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.machine import describe, machine  # noqa: E402
from engine.hardware import detect, resolve_dtype  # noqa: E402

ENGINES = ("off", "vllm", "llmaas")
LABELS = {"off": "LoRA disabled", "vllm": "LoRA enabled, vLLM's ops", "llmaas": "LoRA enabled, LLMaaS kernels"}
WORKLOADS = ("base", "1 adapter", "4 adapters")
RESULT_PREFIX = "LORA_BENCH_RESULT "
PAUSE_S = 0.5
ADAPTER_RANK = 8
N_ADAPTERS = 4
KV_CACHE_SPACE_GIB = 2
TOPICS = (
    "the moon", "volcanoes", "honey bees", "the ocean", "trains", "chess", "coffee", "rainbows",
    "glaciers", "owls", "bread", "the internet", "deserts", "whales", "bicycles", "clocks",
)  # fmt: skip
QUESTIONS = ("Tell me a fact about {}.", "Write two sentences about {}.")


def prompts(n: int) -> list[str]:
    """``n`` distinct short chat questions."""
    pool = [q.format(topic) for q in QUESTIONS for topic in TOPICS]
    return [pool[i % len(pool)] + ("" if i < len(pool) else f" ({i})") for i in range(n)]


def make_adapters(model_dir: Path, root: Path, strength: float = 0.1, count: int = N_ADAPTERS) -> list[Path]:
    """``count`` random rank-8 peft adapters (A and B both random, times ``strength``), made once and reused.
    At 0.1 the model's answers stay ordinary (often the base's own); larger values change them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = [root / f"adapter-{i}-x{strength:g}" for i in range(count)]
    if all((d / "adapter_config.json").exists() for d in dirs):
        return dirs
    for i, target in enumerate(dirs):
        torch.manual_seed(i)
        base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        config = LoraConfig(
            r=ADAPTER_RANK,
            lora_alpha=2 * ADAPTER_RANK,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            init_lora_weights=False,  # random B as well as A: the adapter changes every projection
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.mul_(strength)  # 0.1 keeps the outputs sane: the model still produces ordinary tokens
        model.save_pretrained(str(target))
    return dirs


# ---------------------------------------------------------------------------------------------------------------
# One engine (runs in a subprocess: ``--worker``), serving "run <workload>" lines on stdin.


def serve_engine(engine: str, model_dir: Path, adapters: list[Path], n_prompts: int, max_tokens: int) -> None:
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(KV_CACHE_SPACE_GIB)
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from engine.settings import EngineSettings

    settings = EngineSettings.model_construct()  # our defaults, not the environment's
    lora = engine != "off"
    kwargs: dict[str, Any] = {}
    if lora:
        kwargs = {
            "enable_lora": True,
            "max_loras": settings.max_loras,
            "max_lora_rank": settings.max_lora_rank,
            "max_cpu_loras": max(settings.max_cpu_loras, settings.max_loras),
        }
    started = time.perf_counter()
    llm = LLM(
        model=str(model_dir),
        dtype=resolve_dtype(settings.dtype, detect()),
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        enforce_eager=settings.enforce_eager,
        seed=settings.seed,
        **kwargs,
    )
    startup_s = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    batch = [
        TokensPrompt(
            prompt_token_ids=tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=False
            )
        )
        for text in prompts(n_prompts)
    ]
    requests = [LoRARequest(f"bench-{i}", i + 1, str(path)) for i, path in enumerate(adapters)]
    plans: dict[str, list[Any]] = {"base": [None] * n_prompts}
    if lora:
        plans["1 adapter"] = [requests[0]] * n_prompts
        plans["4 adapters"] = [requests[i % len(requests)] for i in range(n_prompts)]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)

    def tok_s(workload: str) -> float:
        t0 = time.perf_counter()
        outputs = llm.generate(batch, params, lora_request=plans[workload], use_tqdm=False)
        wall = time.perf_counter() - t0
        return sum(len(out.outputs[0].token_ids) for out in outputs) / wall

    for workload in plans:  # warm-up: loads the adapters, first-touches buffers
        tok_s(workload)
    reply({"ready": True, "startup_s": startup_s, "workloads": list(plans)})
    for line in sys.stdin:
        command, _, workload = line.strip().partition(" ")
        if command != "run":
            break
        reply({"tok_s": tok_s(workload)})


def reply(message: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(message), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The driver.


class EngineProcess:
    """One ``--worker`` subprocess: started once, then asked for one workload at a time."""

    def __init__(self, engine: str, args: argparse.Namespace, adapters: list[Path], log_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMAAS_") or k == "LLMAAS_KERNEL_CACHE_DIR"}
        env["PYTHONUNBUFFERED"] = "1"
        env["LLMAAS_LORA_KERNELS"] = "vllm" if engine == "vllm" else "llmaas"
        if args.in_process:
            env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", engine]
        command += ["--model-dir", str(args.model_dir), "--prompts", str(args.prompts)]
        command += ["--max-tokens", str(args.max_tokens), "--adapters", *map(str, adapters)]
        self.engine = engine
        self.log_path = log_dir / f"lora_kernels-{engine}.log"
        print(f"[{engine}] starting: {LABELS[engine]} (log: {self.log_path})", flush=True)
        self._log = self.log_path.open("w")
        self._proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        hello = self._receive()
        self.startup_s: float = hello["startup_s"]
        self.workloads: list[str] = hello["workloads"]

    def run(self, workload: str) -> float:
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"run {workload}\n")
        self._proc.stdin.flush()
        return float(self._receive()["tok_s"])

    def _receive(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX) :])
            self._log.write(line)
        raise RuntimeError(f"engine {self.engine} stopped (exit {self._proc.wait()}); see {self.log_path}")

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._log.close()


def measure(engines: dict[str, EngineProcess], repeats: int) -> dict[str, dict[str, Any]]:
    """``repeats`` rounds; in each, every (engine, workload) runs once between two runs of the LoRA-disabled
    engine's base workload, and its ratio is taken to the mean of those two (the machine's drift cancels)."""
    names = list(engines)
    tok_s: dict[str, dict[str, list[float]]] = {n: {w: [] for w in engines[n].workloads} for n in names}
    ratio: dict[str, dict[str, list[float]]] = {n: {w: [] for w in engines[n].workloads} for n in names}
    subjects = [(n, w) for n in names if n != "off" for w in engines[n].workloads]

    def run(name: str, workload: str) -> float:
        time.sleep(PAUSE_S)  # the previous engine's idle OpenMP threads stop spinning
        value = engines[name].run(workload)
        tok_s[name][workload].append(value)
        return value

    for round_no in range(repeats):
        shift = round_no % max(len(subjects), 1)
        before = run("off", "base")
        ratio["off"]["base"].append(1.0)
        line = [f"off/base {before:.0f} tok/s"]
        for name, workload in subjects[shift:] + subjects[:shift]:
            value = run(name, workload)
            after = run("off", "base")
            ratio["off"]["base"].append(1.0)
            ratio[name][workload].append(value / ((before + after) / 2))
            line.append(f"{name}/{workload} {value:.0f} ({ratio[name][workload][-1]:.2f}x), off/base {after:.0f}")
            before = after
        print(f"round {round_no + 1}/{repeats}: " + ", ".join(line), flush=True)
    return {n: {"engine": n, "startup_s": engines[n].startup_s, "tok_s": tok_s[n], "ratio": ratio[n]} for n in names}


def table(results: dict[str, dict]) -> str:
    lines = ["| engine | " + " | ".join(WORKLOADS) + " |", "|---" * (len(WORKLOADS) + 1) + "|"]
    for engine in ENGINES:
        cells = []
        for workload in WORKLOADS:
            values = results[engine]["tok_s"].get(workload)
            if not values:
                cells.append("-")
                continue
            ratio = statistics.median(results[engine]["ratio"][workload])
            cells.append(f"{statistics.median(values):.1f} tok/s ({ratio:.2f}x)")
        lines.append(f"| {LABELS[engine]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=None, help="default: our default model (converted once)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="measurement rounds (default 5)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--in-process", action="store_true", help="engine core and worker inside the engine's process")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--adapters", nargs="*", type=Path, default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        serve_engine(args.worker, args.model_dir, args.adapters, args.prompts, args.max_tokens)
        return

    if args.model_dir is None:
        from engine.model_prep import prepare_default_model
        from engine.settings import EngineSettings

        args.model_dir = prepare_default_model(EngineSettings())
    args.results_dir.mkdir(parents=True, exist_ok=True)
    adapters = make_adapters(args.model_dir, args.results_dir / "lora_kernels_adapters")
    engines: dict[str, EngineProcess] = {}
    try:
        for name in dict.fromkeys(["off", *args.engines]):  # the reference is always measured
            engines[name] = EngineProcess(name, args, adapters, args.results_dir)
        results = measure(engines, args.repeats)
    finally:
        for process in engines.values():
            process.close()
    for engine in ENGINES:
        results.setdefault(engine, {"engine": engine, "tok_s": {}, "ratio": {}})

    print()
    topology = "engines in-process" if args.in_process else "vLLM's default engine processes"
    print(
        f"{args.prompts} prompts x {args.max_tokens} tokens, {topology}, {args.repeats} rounds; median tok/s and "
        "median ratio to the LoRA-disabled engine's base throughput around it"
    )
    print(f"machine: {describe(machine())}")
    print(table(results))
    ours = results["llmaas"]["ratio"]
    if ours:
        print(f"\nbase on the LoRA engine (ours): {statistics.median(ours['base']):.2f}x (target >= 0.97)")
        print(f"4 adapters mixed (ours): {statistics.median(ours['4 adapters']):.2f}x (target >= 0.9)")
    out = args.results_dir / ("lora_kernels-in-process.json" if args.in_process else "lora_kernels.json")
    out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "prompts": args.prompts,
                "max_tokens": args.max_tokens,
                "repeats": args.repeats,
                "in_process": args.in_process,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
