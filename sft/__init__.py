"""Stage 1: instruction SFT (QLoRA by default; prompt tuning or full fine-tuning by `model.tuning`) through
TRL's SFTTrainer (`sft.train.train(config)`)."""
