"""Detection: whether a model carries a backdoor (model_level) and which inputs carry its trigger (input_level)."""
