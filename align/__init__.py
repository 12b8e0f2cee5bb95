"""align: an RLHF and preference-tuning suite (QLoRA SFT, reward models, PPO, evaluation).

Kept light: importing `align` or `align.core` loads no deep-learning library.
"""

__version__ = "0.1.0"
