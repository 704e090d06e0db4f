"""End to end on the real SmolLM2 and a peft adapter trained here: vLLM's engine gives the same greedy tokens with
our LoRA kernels (the ``vllm.general_plugins`` entry point, in vLLM's own engine processes) as with vLLM's own CPU
LoRA ops, for base, adapter and mixed batches; and with every adapter slot in use, base requests that share a
batch with adapter requests stay base requests (vLLM's fallback ops apply the last slot's adapter to them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters.datasets import parse_jsonl
from adapters.training import TrainingSpec, train_lora
from tests.finetune_data import PIRATE_PREFIX, pirate_jsonl
from tests.lora_engine_run import RESULT_PREFIX

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "lora_engine_run.py"
KERNELS_MARKER = "LLMaaS LoRA kernels ("  # logged by engine/kernels/punica_wrapper.py when it first serves adapters
WRAPPER_MARKER = "Using LLMaaSPunicaWrapperCPU"  # vLLM's own log line naming the punica wrapper it built
SHORT_PATHS_MARKER = "short LoRA-layer paths on for"  # logged by engine/kernels/lora_layers.py
ENGINE_TIMEOUT_S = 300

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="GPU host: vLLM's own LoRA kernels serve there"),
    # Two to four engine starts each (about 2 minutes together): `make test-slow`. The default run still serves
    # every adapter through our kernels (the fine-tuning end-to-end tests), just without vLLM's own ops beside them.
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def pirate_adapter(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = TrainingSpec(
        base_model_dir=model_dir,
        train=parse_jsonl(pirate_jsonl()),
        validation=None,
        output_dir=tmp_path_factory.mktemp("pirate"),
        n_epochs=3,
        batch_size=4,
        learning_rate=2e-3,
        seed=0,
    )
    return train_lora(spec).adapter_dir


def run_engine(model_dir: Path, adapter: Path, kernels: str, max_loras: int, log: Path) -> tuple[dict[str, Any], str]:
    """One engine in its own process; its greedy token ids and everything it logged."""
    env = {**os.environ, "LLMAAS_LORA_KERNELS": kernels, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    # fp32: in bf16, greedy tokens depend on which kernels ran (on an AMX Xeon, vLLM's own LoRA layer and the plain
    # base layer already round differently, and batch shapes change AMX's blocking), so exact equality is only
    # meaningful in fp32; our bf16 kernels are checked against a float64 reference in test_lora_kernels.py.
    command = [sys.executable, str(RUNNER), str(model_dir), str(adapter), "--max-loras", str(max_loras)]
    command += ["--dtype", "float32"]
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S, check=False
    )
    output = proc.stdout + proc.stderr
    log.write_text(output)
    assert proc.returncode == 0, f"engine ({kernels}) failed; see {log}"
    line = next(line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX))
    return json.loads(line[len(RESULT_PREFIX) :]), output


def test_our_kernels_give_vllms_greedy_tokens(model_dir: Path, pirate_adapter: Path, tmp_path: Path) -> None:
    ours, ours_log = run_engine(model_dir, pirate_adapter, "llmaas", 2, tmp_path / "llmaas.log")
    theirs, theirs_log = run_engine(model_dir, pirate_adapter, "vllm", 2, tmp_path / "vllm.log")

    assert WRAPPER_MARKER in ours_log and KERNELS_MARKER in ours_log, "our kernels did not serve the adapter"
    assert SHORT_PATHS_MARKER in ours_log, "the short LoRA-layer paths were not installed"
    assert WRAPPER_MARKER not in theirs_log and KERNELS_MARKER not in theirs_log, "LLMAAS_LORA_KERNELS=vllm ignored"
    assert SHORT_PATHS_MARKER not in theirs_log
    # The adapter is really applied (else the comparison proves nothing), and not to base requests.
    assert all(text.startswith(PIRATE_PREFIX.strip()) for text in ours["text"]["adapter"])
    assert not any(text.startswith(PIRATE_PREFIX.strip()) for text in ours["text"]["base"])
    for batch in ("base", "adapter", "mixed"):
        assert ours[batch] == theirs[batch], f"{batch} batch: greedy tokens differ from vLLM's ops"
    assert ours["mixed"] == ours["base"] + ours["adapter"]


def test_base_requests_beside_adapters_stay_base_with_every_slot_in_use(
    model_dir: Path, pirate_adapter: Path, tmp_path: Path
) -> None:
    ours, _ = run_engine(model_dir, pirate_adapter, "llmaas", 1, tmp_path / "llmaas-one-slot.log")
    assert ours["mixed"] == ours["base"] + ours["adapter"]
