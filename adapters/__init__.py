"""Per-tenant LoRA adapters and fine-tuning (peft + transformers). Filled by the fine-tuning issue."""
