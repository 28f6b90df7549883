"""Rejection sampling (Llama 2, section 3.2.3): K samples per prompt from the current policy,
each judged by the gated reward (:mod:`rlhf.reward.gate`), the best kept — in a pool kept across
iterations, each prompt's best over all of them (:mod:`.pool`, the paper's fix for the regression
it saw when only the last iteration's samples were kept) — then supervised fine-tuning on the
pool. :mod:`.best_of_n` is the paper's Fig. 7: the reward of the best (and the median) of N
samples as N grows.
"""
