"""Model graders: how often the judge answers in shape, and how often it agrees with a human label, with our
structured output (what the eval runner sends) and without it (the same prompt as a plain chat completion, its
answer parsed as the runner would parse it).

    .venv/bin/python bench/model_graders.py [--model-path DIR] [--results-dir bench/results]

One gateway (``llmaas serve``, the default model unless ``--model-path``). A fixed set of short question/answer
pairs, half right and half wrong, is graded by a ``label_model`` grader ("correct" / "incorrect", passing
"correct") and a ``score_model`` grader (1 to 5, passing at 3) in one ``jsonl`` eval run (the answers are given:
only the judges are called), at temperature 0. Agreement: the grader passes exactly the right answers. This measures
quality, not speed: any machine gives the same numbers for the same model and dtype."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.loadgen import create_tenant_key, running_gateway
from bench.machine import describe, machine
from gateway.evals.judge import answer_schema, judge_request, model_grader

ADMIN_KEY = "sk-admin-bench-0123456789abcdef"
MODEL = "smollm2-135m-instruct"
FACTS = [
    ("What is the capital of France?", "Paris", "Berlin"),
    ("What is the capital of Italy?", "Rome", "Madrid"),
    ("What is the capital of Japan?", "Tokyo", "Beijing"),
    ("How many legs does a spider have?", "Eight", "Six"),
    ("What color is the sky on a clear day?", "Blue", "Green"),
    ("What is 2 plus 2?", "Four", "Five"),
    ("What do bees make?", "Honey", "Milk"),
    ("What is frozen water called?", "Ice", "Steam"),
    ("How many days are in a week?", "Seven", "Ten"),
    ("What animal says moo?", "A cow", "A cat"),
    ("What is the largest planet in the solar system?", "Jupiter", "Mercury"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", "Charles Dickens"),
]
PROMPT = [
    {"role": "system", "content": "You check answers to quiz questions."},
    {"role": "user", "content": "Question: {{item.question}}\nAnswer: {{sample.output_text}}\nIs the answer right?"},
]
GRADERS: list[dict[str, Any]] = [
    {
        "type": "label_model",
        "name": "label",
        "model": MODEL,
        "input": PROMPT,
        "labels": ["correct", "incorrect"],
        "passing_labels": ["correct"],
    },
    {"type": "score_model", "name": "score", "model": MODEL, "input": PROMPT, "range": [1, 5], "pass_threshold": 3},
]


def items() -> list[dict[str, Any]]:
    return [
        {"item": {"question": question, "right": right}, "sample": {"output_text": answer}}
        for question, good, bad in FACTS
        for answer, right in ((good, True), (bad, False))
    ]


def constrained(client: OpenAI) -> dict[str, dict[str, float]]:
    """Each grader's answers in shape and agreement, through an eval run (the judge's structured output)."""
    created = client.evals.create(
        name="judge quality",
        data_source_config={"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True},
        testing_criteria=GRADERS,  # type: ignore[arg-type]
    )
    source: Any = {"type": "jsonl", "source": {"type": "file_content", "content": items()}}
    run_id = client.evals.runs.create(created.id, data_source=source).id
    while client.evals.runs.retrieve(run_id, eval_id=created.id).status in ("queued", "in_progress"):
        time.sleep(1)
    outcome: dict[str, dict[str, float]] = {g["name"]: {"in_shape": 0, "agree": 0} for g in GRADERS}
    for item in client.evals.runs.output_items.list(run_id, eval_id=created.id, limit=100):
        for result in item.results:
            outcome[result.name]["in_shape"] += 1
            outcome[result.name]["agree"] += result.passed == item.datasource_item["right"]
    return outcome


def unconstrained(client: OpenAI) -> dict[str, dict[str, float]]:
    """The same judge prompts as plain chat completions (no response_format), answers parsed as the runner parses."""
    outcome: dict[str, dict[str, float]] = {g["name"]: {"in_shape": 0, "agree": 0} for g in GRADERS}
    for entry in items():
        namespaces = {"item": entry["item"], "sample": entry["sample"]}
        for criterion in GRADERS:
            grader = model_grader(criterion)
            assert grader is not None
            request = judge_request(grader, namespaces, 128)
            reply = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": m.role, "content": m.text()} for m in request.messages],  # type: ignore[misc]
                temperature=0,
                max_tokens=128,
            )
            try:
                result = json.loads(reply.choices[0].message.content or "")["result"]
            except (ValueError, TypeError, KeyError):
                continue
            enum = answer_schema(grader)["properties"]["result"]
            if "enum" in enum:
                if result not in enum["enum"]:
                    continue
                passed = result == "correct"
            else:
                if not isinstance(result, int | float) or not enum["minimum"] <= result <= enum["maximum"]:
                    continue
                passed = result >= 3
            outcome[grader.name]["in_shape"] += 1
            outcome[grader.name]["agree"] += passed == entry["item"]["right"]
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", type=Path, default=None)
    parser.add_argument("--results-dir", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    from engine.model_prep import prepare_default_model
    from engine.settings import EngineSettings

    model_path = args.model_path or prepare_default_model(EngineSettings())
    facts = machine()
    with tempfile.TemporaryDirectory(prefix="bench-graders-") as data_dir:
        settings = {
            "LLMAAS_MODEL_PATH": str(Path(model_path).resolve()),
            "LLMAAS_DATA_DIR": data_dir,
            "LLMAAS_ADMIN_KEY": ADMIN_KEY,
            "LLMAAS_EMBEDDED_WORKER": "false",
            "LLMAAS_EMBEDDING_MODEL": "",
            "LLMAAS_LOG_LEVEL": "warning",
        }
        with running_gateway(settings, Path(data_dir) / "server.log", MODEL) as gateway:
            key = create_tenant_key(gateway.base_url, ADMIN_KEY, "bench-graders")
            client = OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, timeout=300)
            rows = {"structured output": constrained(client), "free text": unconstrained(client)}
    total = len(items())
    print(f"\n{describe(facts)}, {total} answers ({total // 2} right, {total // 2} wrong)\n")
    print("| judge | grader | answers in shape | agrees with the label |\n|---|---|---:|---:|")
    for how, outcome in rows.items():
        for name, counts in outcome.items():
            print(f"| {how} | {name} | {counts['in_shape']:.0f} / {total} | {counts['agree']:.0f} / {total} |")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "model_graders.json").write_text(json.dumps({"machine": facts, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
