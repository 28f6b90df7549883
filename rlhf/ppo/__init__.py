"""PPO (Llama 2, section 3.2.3): the policy improved against the gated reward, held near its
start by a per-token KL penalty; GRPO and RLOO on the same loop.

- :mod:`.rewards`: ``LOGIT`` and ``WHITEN`` of the score, per-token KL estimators (k1, k3), the
  per-token rewards (−β·KL everywhere, the score at the last token, a missing-EOS penalty);
- :mod:`.advantages`: GAE with a value head; GRPO's and RLOO's group baselines;
- :mod:`.losses`: the clipped policy and value losses, the policy's entropy;
- :mod:`.config`: the settings (:class:`PPOConfig`); :mod:`.rollout`: one rollout, sampled,
  judged and given its log-probabilities; :mod:`.value`: the value model;
- :mod:`.update`: one update on a rollout (rewards, advantages, minibatch steps);
- :mod:`.job`: the "ppo" stage (iterations, held-out evaluation, early stopping, checkpoints);
  :mod:`.cli`: ``python -m rlhf ppo``.

Gating (which reward model judges a reply) is :func:`rlhf.reward.gate.gated_reward`'s, done by
the callers; these modules take its R_c as numbers.
"""
