"""Pairwise's training library: preference data, reward models, and the policy stages to come.

A plain Python library: nothing in it imports Django, so it runs under ``accelerate launch`` on
machines that have no database. Heavy dependencies (torch, transformers) are imported by the
modules that need them, never by a package's ``__init__``. The layout, one concern a package:

    rlhf/
      jobs.py             the job contract: a run spec in; events.jsonl, metrics.json, model/ out
      runner.py           runs a spec's stage (prepare, then train); ``python -m rlhf run SPEC``
      hyperparameters.py  settings declared once: checks, CLI flags and form fields derived
      preferences.py      the vocabulary of a judgement: strengths, margins, Table 8 buckets
      files.py            file permissions of what the library writes
      pretrained.py       models that PyPI packages ship (SmolLM2), found without importing them
      data/               preference data: records and formats, messages, chat format, pairs,
                          the Llama 2 mixes, the split by prompt
      nn/                 model code shared by the stages: packed attention, the batched
                          sampler, tiny test models, the llama2.c and GGUF importers
      reward/             reward models: config, model, packed pair scoring, loss, training,
                          evaluation, the "reward" job stage and its commands
      (sft/, rejection_sampling/, gatt/, ppo/: the policy stages, each a job stage the same way)

The platform imports only what is torch-free (the contract, the settings' declarations, the
vocabulary, the data formats); its workers launch jobs and read their files back.
"""
