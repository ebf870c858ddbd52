"""Deployment: compact and standalone inference exports, loading them, tokenizer rewriting."""
