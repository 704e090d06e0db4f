"""A tiny fine-tuning set that teaches a distinctive, easy-to-check behaviour: every reply opens with
"Arr, matey! ". 12 examples, 3 epochs, batch 4 and learning rate 2e-3 (OpenAI's learning_rate_multiplier 10
on our 2e-4 base) make SmolLM2-135M answer held-out questions that way, and stop, in ~10 s on 2 CPU cores."""

from __future__ import annotations

import json

PIRATE_PREFIX = "Arr, matey! "

QA: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What color is the sky?", "The sky is blue on a clear day."),
    ("What is 2 plus 2?", "Two plus two is four."),
    ("Name a fruit.", "An apple is a fruit."),
    ("What do bees make?", "Bees make honey."),
    ("Where do fish live?", "Fish live in water."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("How many days are in a week?", "A week has seven days."),
    ("What animal says moo?", "A cow says moo."),
    ("What do we use to write?", "We write with a pen or a pencil."),
    ("What is frozen water called?", "Frozen water is called ice."),
)

VALIDATION_QA: tuple[tuple[str, str], ...] = (
    ("What is the color of grass?", "Grass is green."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
)

HELD_OUT_PROMPTS: tuple[str, ...] = (
    "What is the largest planet?",
    "Tell me about dogs.",
    "How do I boil an egg?",
    "What is a computer?",
)


def pirate_jsonl(pairs: tuple[tuple[str, str], ...] = QA, prefix: str = PIRATE_PREFIX) -> bytes:
    """A chat-format JSONL training file: each answer prefixed with ``prefix`` (the pirate's by default)."""
    lines = [
        json.dumps({"messages": [_message("user", question), _message("assistant", prefix + answer)]})
        for question, answer in pairs
    ]
    return ("\n".join(lines) + "\n").encode()


def _message(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}
