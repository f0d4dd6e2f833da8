"""Bring autoopt's trial into training frameworks: PyTorch Lightning (``[lightning]`` extra) and Hugging Face ``transformers.Trainer`` (``[hf]``)."""
