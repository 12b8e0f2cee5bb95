"""DPO, KTO, ORPO, GRPO and RLOO, the alternatives to our PPO, through TRL's trainers on our data
formats, model loading and output contract (`align.prefs.train.dpo`, `kto`, `orpo`, `grpo`, `rloo`)."""
