"""Package data: featuredrift's own files (probe sets)."""
