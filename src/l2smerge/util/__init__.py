"""Plumbing shared by every stage: atomic writes, JSONL reading, the user-facing error."""
