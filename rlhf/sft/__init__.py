"""Supervised fine-tuning of the policy (Llama 2, section 3.1).

- :mod:`.config`: the settings of a run, declared once (torch-free: the platform reads it);
- :mod:`.data`: conversations from JSONL (messages, prompt-completion, the platform's exports,
  rejection-sampling pools), the split by prompt, and tokenization with the loss mask: which
  tokens count (assistant turns only);
- :mod:`.packing`: examples packed into rows without attention across them, and the causal LM
  run on a packed row;
- :mod:`.losses`: the masked token cross-entropy;
- :mod:`.training`: the trainer (one CPU or many GPUs through accelerate, checkpoints, resume);
- :mod:`.job`: the "sft" stage of a job;
- :mod:`.cli`: ``python -m rlhf sft`` (the same job, from flags).
"""
