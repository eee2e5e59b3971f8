"""Supervised fine-tuning: model, tokenizer, image processing and the training loop (``python -m sft``)."""
