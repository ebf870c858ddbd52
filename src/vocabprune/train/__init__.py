"""Training front-ends on top of the core: exact weight decay, the HF Trainer callback and
resumable checkpoints, distributed agreement on one kept vocabulary, generation."""
