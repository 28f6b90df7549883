"""Evaluating a policy (``python -m rlhf eval-policy``): on held-out prompt sets, sample responses
and report the mean helpfulness, safety and gated rewards with standard errors, per prompt set
and risk category; the refusal rate on harmful prompts and on safe look-alikes (over-refusal,
XSTest), with a documented refusal detector (:mod:`.refusal`); the KL divergence to a reference
policy; and, between two policies, the win rate by the gated reward with a confidence interval
(:mod:`.compare`).
"""
