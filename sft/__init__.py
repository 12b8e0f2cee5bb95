"""Stage 1: QLoRA instruction SFT through TRL's SFTTrainer (`sft.train.train(config)`)."""
