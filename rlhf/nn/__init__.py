"""Model code shared by the training stages: the training loop on accelerate (optimizer,
schedule, checkpoints), packed attention (many sequences in one row, none attending to another),
the batched KV-cached sampler, tiny models for tests and demos, and the importers of llama2.c
checkpoints and GGUF files."""
