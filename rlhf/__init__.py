"""Pairwise's training library: preference data, reward models, rejection sampling and PPO.

A plain Python library: nothing in it imports Django, so it runs under ``torchrun`` or
``accelerate launch`` on machines that have no database. Heavy dependencies (torch,
transformers) are imported by the modules that need them, never here.
"""
