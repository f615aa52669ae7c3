"""The agent engine (Django-free): tool packs, tool-call parsing, the Tulip-style agent loop."""
