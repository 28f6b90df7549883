"""Training runs from the platform (DESIGN.md, "Reward model"), by the one training boundary.

The platform never trains in its own processes: it writes a job spec (:mod:`rlhf.jobs`) and a
model worker launches it with ``accelerate launch -m rlhf run SPEC`` (``model_worker.training``),
sending the job's events back as plain data. A run's life, module by module:

- :mod:`.start` (web process): check a request (kind, batches, base model, settings — by the
  settings' own declarations, ``rlhf.reward.config``) and queue a :class:`TrainingRun`, recorded
  in the outbox, which sends it once the transaction commits and again until a worker answers.
- :mod:`.lifecycle` (platform tasks): claim the run, freeze its data (a training export whose
  SHA-256 is kept, so the run can be reproduced whatever is annotated later), write its spec and
  send it to the ``training`` queue; mirror the events that come back into the run (logs,
  progress, heartbeat, the evaluation of the current model before training); on the job's end,
  register the model as a new version, not current (staff compare and promote it), or record
  the failure. A run whose worker is lost (no events for ``PAIRWISE_TRAINING_STALL_SECONDS``) is
  sent again and resumes from its job's last checkpoint.
- :mod:`.report` (pages): the run's metrics shaped as Llama 2's Table 8, and its log.

Nothing here imports torch or the training code of ``rlhf``; the settings' declarations and the
job contract are plain Python.
"""
