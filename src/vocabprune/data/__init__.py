"""Data: reading examples from files and datasets, counting token ids, vocabulary growth, and
the parameter / byte accounting of full, pruned and floor models."""
