"""PPO (Llama 2, section 3.2.3): the policy improved against the gated reward, held near its
start by a per-token KL penalty. The pure math first; the trainer and the job stage follow.

- :mod:`.rewards`: ``LOGIT`` and ``WHITEN`` of the score, per-token KL estimators (k1, k3), the
  per-token rewards (−β·KL everywhere, the score at the last token, a missing-EOS penalty);
- :mod:`.advantages`: GAE with a value head; GRPO's and RLOO's group baselines;
- :mod:`.losses`: the clipped policy and value losses, the policy's entropy.

Gating (which reward model judges a reply) is :func:`rlhf.reward.gate.gated_reward`'s, done by
the callers; these modules take its R_c as numbers.
"""
