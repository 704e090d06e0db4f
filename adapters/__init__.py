"""Per-tenant LoRA adapters and fine-tuning (peft + transformers): ``datasets`` parses and validates OpenAI's
JSONL training files, ``training`` trains a LoRA adapter on them (CPU, plain PyTorch loop), ``jobs`` keeps the jobs
and ``job_objects`` shows them in OpenAI's shapes; ``api_objects`` and ``pagination`` are the pieces every API
object and list shares (the gateway's too)."""
