"""Stage 3: our PPO for RLHF (rollout -> advantages -> clipped updates), plus DPO/GRPO/RLOO via TRL."""
