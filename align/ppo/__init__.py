"""Stage 3: our PPO for RLHF (rollout -> advantages -> clipped updates), `align.ppo.train.train(config)`.

DPO, KTO, ORPO, GRPO and RLOO, through TRL's trainers, live in `align.prefs`.
"""
