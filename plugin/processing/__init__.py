"""Processing provider: "Build or update search index" and "Search imagery index"."""
