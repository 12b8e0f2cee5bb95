"""DPO, GRPO and RLOO through TRL's trainers, on our data formats, model loading and output contract."""
