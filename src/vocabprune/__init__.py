"""vocabprune: fine-tune with only the embedding rows your data uses, then restore."""
__version__ = "0.1.0"
