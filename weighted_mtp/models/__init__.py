"""Models: the Meta-layout MTP transformer, its formats, tokenizer, value head, reference."""
