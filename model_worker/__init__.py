"""Celery tasks and the generation / scoring backends they call.

Depends on ``rlhf``; never imported by it. The names of its tasks are here, torch-free, for the
platform, which sends them by name and never imports their code.
"""

GENERATE_RESPONSES = "model_worker.tasks.generate_responses"
TRAIN_MODEL = "model_worker.tasks.train_model"
