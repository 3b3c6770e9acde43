"""LoRA/QLoRA supervised fine-tuning from a dataset snapshot; runs standalone on a GPU host."""
