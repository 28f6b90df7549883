"""The settings of a PPO run (and of GRPO and RLOO on the same loop), declared once
(:mod:`rlhf.hyperparameters`).

An *iteration* samples ``group_size`` responses to each of ``rollout_batch_size`` prompts (the
rollout, :mod:`rlhf.ppo.rollout`), then takes one optimizer step per minibatch of
``minibatch_size`` responses, ``ppo_epochs`` times over the rollout. Llama 2 (section 3.2.3):
batch 512, minibatch 64, one step per minibatch, lr 1e-6 constant, β = 0.01, clip 0.2. The
defaults are the paper's except the batch sizes, which fit a CPU and a small policy.

This module imports no torch, so the platform may use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf import trainer_settings
from rlhf.hyperparameters import ADVANCED, BASIC, ConfigError, setting
from rlhf.trainer_settings import TrainerConfig

ALGORITHMS = ("ppo", "grpo", "rloo")
# Defined here, torch-free, for the platform's forms; rlhf.ppo.rewards computes them.
KL_ESTIMATORS = ("k1", "k3")
VALUE_INITS = ("reward", "policy")
# Samples per prompt when group_size is not given. GRPO and RLOO need at least 2: the other
# responses to the same prompt are their baseline; PPO's value head is its own.
GROUP_SIZES = {"ppo": 1, "grpo": 4, "rloo": 4}


@dataclass
class PPOConfig(TrainerConfig):
    """Every setting of a PPO, GRPO or RLOO run; the defaults are Llama 2's where it gives them.

    ``group_size`` left unset (None) becomes the algorithm's default (:data:`GROUP_SIZES`) when
    the config is made, so the config and its JSON always hold the number used.
    """

    policy: str = setting("", help="the policy improved, and its frozen reference π_0")
    reward_helpfulness: str = setting("", help="the helpfulness reward model's directory")
    reward_safety: str = setting("", help="the safety reward model's directory")
    algorithm: str = setting(
        "ppo", label="Algorithm", choices=ALGORITHMS, flag="algorithm", form=BASIC,
        help="ppo: GAE with a value head (Llama 2); grpo, rloo: the group of responses to a "
        "prompt is the baseline, no value head.",
    )  # fmt: skip
    # --- the reward -------------------------------------------------------------------------
    beta: float = setting(
        0.01, label="KL coefficient β", minimum=0, flag="beta", form=BASIC,
        help="Weight of the per-token KL to the reference policy. Llama 2: 0.01.",
    )  # fmt: skip
    kl_estimator: str = setting(
        "k1", label="KL estimator", choices=KL_ESTIMATORS, flag="kl_estimator", form=ADVANCED,
        help="k1: log π − log π_0 (Llama 2, InstructGPT); k3: (r − 1) − log r, never negative.",
    )  # fmt: skip
    truncation_penalty: float = setting(
        0.0, label="Truncation penalty", minimum=0, flag="truncation_penalty", form=ADVANCED,
        help="Subtracted from the whitened score of a response that ends without EOS (in "
        "standard deviations). Llama 2: none.",
    )  # fmt: skip
    # --- advantages and losses --------------------------------------------------------------
    gamma: float = setting(
        1.0, minimum=0, maximum=1, flag="gamma", help="GAE discount γ (ppo). Usual for RLHF: 1."
    )
    lam: float = setting(
        0.95, minimum=0, maximum=1, flag="lam", help="GAE λ (ppo). Usual for RLHF: 0.95."
    )
    clip: float = setting(
        0.2, label="Clip ε", minimum=0, above=True, flag="clip", form=ADVANCED,
        help="Policy ratio clipped to [1 − ε, 1 + ε]. Llama 2: 0.2.",
    )  # fmt: skip
    value_clip: float = setting(
        0.2, minimum=0, above=True, flag="value_clip",
        help="The value head moves at most this far from its rollout values (ppo).",
    )  # fmt: skip
    value_init: str = setting(
        "reward", choices=VALUE_INITS, flag="value_init",
        help="The value head's start (ppo): the helpfulness reward model's weights (InstructGPT; "
        "needs the policy's tokenizer) or the policy's with a new head.",
    )  # fmt: skip
    # --- the optimizer ----------------------------------------------------------------------
    learning_rate: float = trainer_settings.learning_rate(1e-6, help="Llama 2: 1e-6, constant.")
    adam_betas: tuple[float, float] = (0.9, 0.95)  # Llama 2: β1 0.9, β2 0.95
    adam_epsilon: float = trainer_settings.adam_epsilon(1e-5)  # Llama 2: 1e-5
    weight_decay: float = trainer_settings.weight_decay(0.1, help="Llama 2: 0.1.")
    max_grad_norm: float = trainer_settings.max_grad_norm(1.0)  # Llama 2: 1.0
    # --- the batches ------------------------------------------------------------------------
    rollout_batch_size: int = setting(
        8, label="Prompts per iteration", minimum=1, flag="rollout_batch_size", form=BASIC,
        help="Prompts sampled per iteration (× group_size responses). Llama 2: 512.",
    )  # fmt: skip
    group_size: int | None = setting(
        None, label="Samples per prompt", minimum=1, flag="group_size", form=BASIC,
        help="Responses to each prompt, its prefill shared; blank: 1 for ppo, 4 for grpo and "
        "rloo (which need at least 2).",
    )  # fmt: skip
    minibatch_size: int = setting(
        4, label="Minibatch (responses)", minimum=1, flag="minibatch_size", form=BASIC,
        help="Responses per optimizer step; must divide the responses of an iteration. "
        "Llama 2: 64.",
    )  # fmt: skip
    ppo_epochs: int = setting(
        1, minimum=1, flag="ppo_epochs",
        help="Passes over each rollout. Llama 2: one step per minibatch, i.e. 1.",
    )  # fmt: skip
    iterations: int = setting(
        100, label="Iterations", minimum=1, flag="iterations", form=BASIC,
        help="Rollouts (each followed by its updates) at most.",
    )  # fmt: skip
    # --- sampling and judging ---------------------------------------------------------------
    max_new_tokens: int = setting(128, minimum=1, flag="max_new_tokens")
    temperature: float = setting(1.0, minimum=0, flag="temperature", help="1: sample π itself.")
    top_p: float = setting(1.0, minimum=0, above=True, maximum=1, flag="top_p")
    reward_batch_size: int = setting(16, minimum=1, flag="reward_batch_size")
    reward_max_length: int = setting(
        512, minimum=2, flag="reward_max_length", help="Tokens per scored text."
    )
    # --- evaluation and early stopping ------------------------------------------------------
    eval_fraction: float = trainer_settings.eval_fraction(
        0.1, help="Prompts held out by hash (rlhf.data.split.held_out): never trained on, "
        "their gated reward decides early stopping.",
    )  # fmt: skip
    eval_every: int = setting(
        10, label="Evaluate every (iterations)", minimum=0, flag="eval_every", form=ADVANCED,
        help="Iterations between evaluations on the held-out prompts; 0: at the end only.",
    )  # fmt: skip
    patience: int = setting(
        3, minimum=0, flag="patience",
        help="Stop after this many evaluations without a better held-out gated reward; 0: "
        "never (Llama 2 stops early on held-out prompts).",
    )  # fmt: skip
    max_kl: float | None = setting(
        None, minimum=0, above=True, flag="max_kl",
        help="Stop when the mean KL to the reference (per response) exceeds this; blank: no bound.",
    )  # fmt: skip
    checkpoint_every: int = setting(
        1, minimum=0, flag="checkpoint_every", form=ADVANCED,
        help="Iterations between checkpoints (the policy, the value model and both optimizers' "
        "states: about four times the policy's size; the newest only is kept); 0: none.",
    )  # fmt: skip
    seed: int = trainer_settings.seed(0, help="Fixes the split, every sample's seed and the order.")
    cpu: bool = trainer_settings.cpu(False)
    fsdp: bool = setting(
        False, help="Shard the policy and the value model, their gradients and AdamW states, "
        "over the processes (FSDP2; implied by `accelerate launch --use_fsdp`); else each "
        "process holds a replica (DDP).",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.group_size is None and self.algorithm in GROUP_SIZES:
            self.group_size = GROUP_SIZES[self.algorithm]
        super().__post_init__()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field, its own rule or a combination."""
        super().validate()
        for name in ("policy", "reward_helpfulness", "reward_safety"):
            if not getattr(self, name):
                raise ConfigError(name, "is required")
        self._check_batches()
        if self.patience and not (self.eval_fraction > 0 and self.eval_every > 0):
            raise ConfigError(
                "patience", "needs held-out prompts (eval_fraction > 0) evaluated during the "
                "run (eval_every > 0); set it to 0 to train without early stopping",
            )  # fmt: skip

    def _check_batches(self) -> None:
        if self.group_size is None:
            raise ConfigError("group_size", "is required")
        if self.algorithm != "ppo" and self.group_size < 2:
            raise ConfigError(
                "group_size", f"{self.algorithm} needs at least 2 responses per prompt (the "
                f"others are each one's baseline), not {self.group_size}",
            )  # fmt: skip
        responses = self.rollout_batch_size * self.group_size
        if responses % self.minibatch_size:
            raise ConfigError(
                "minibatch_size", f"must divide the {responses} responses of an iteration "
                f"(rollout_batch_size × group_size), not {self.minibatch_size}",
            )  # fmt: skip

    @property
    def responses_per_iteration(self) -> int:
        return self.rollout_batch_size * self.group_size


__all__ = ["ALGORITHMS", "GROUP_SIZES", "KL_ESTIMATORS", "VALUE_INITS", "ConfigError", "PPOConfig"]
