"""Per-tenant LoRA adapters and fine-tuning (peft + transformers): ``datasets`` parses and validates OpenAI's
JSONL training files, ``training`` trains a LoRA adapter on them (CPU, plain PyTorch loop)."""
