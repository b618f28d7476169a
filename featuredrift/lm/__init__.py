"""Reading a Hugging Face causal LM: hookpoint names, activation capture, chat prompts and greedy generation."""
