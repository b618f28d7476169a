"""The default probe set shipped with featuredrift, as JSONL files."""
