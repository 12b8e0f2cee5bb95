"""Stage 2: a scalar reward model from rankings or preferences, with the K-wise InstructGPT loss in our own
loop (`reward.train.train(config)`); `reward.score.RewardModel` loads one and scores completions."""
