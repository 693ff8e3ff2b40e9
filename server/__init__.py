"""pagedserve's OpenAI-compatible HTTP server: `pagedserve serve [MODEL]` or `python -m server serve`."""
