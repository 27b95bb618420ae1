"""Session generation: synthetic sessions and replayed traces, their prompts, lengths and tokenizer."""
