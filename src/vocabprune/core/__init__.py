"""The core: the kept vocabulary, the one surgery plan, the pruned-state record, the row store,
prune / restore / load_pruned, and id remapping. Plain torch plus transformers' loaders; nothing
here knows about training loops, exports or the command line."""
