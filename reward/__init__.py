"""Stage 2: the reward model from human rankings."""
