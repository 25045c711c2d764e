"""Repair: Fine-Pruning, fine-tuning and unlearning a reversed trigger, measured before and after."""
