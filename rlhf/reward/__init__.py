"""Reward models (Llama 2, section 3.2.2).

- :mod:`.config`: the settings of a run, declared once (torch-free: the platform reads it);
- :mod:`.model`: a scalar head on any Hugging Face backbone, text scoring, saving and loading;
- :mod:`.scoring`: chosen and rejected scored in one packed pass, their shared context once;
- :mod:`.losses`: the margin ranking loss;
- :mod:`.training`: the trainer (one CPU or many GPUs through accelerate, checkpoints, resume);
- :mod:`.evaluation`: accuracy by Table 8 bucket, calibration, the safety gate;
- :mod:`.job`: the "reward" stage of a job (data chosen and mixed, baseline, training);
- :mod:`.cli`: ``train-reward`` (the same job, from flags) and ``eval-reward``.
"""
