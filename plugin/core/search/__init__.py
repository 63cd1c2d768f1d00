"""Query -> ranked tiles: query syntax, candidates, dense/lexical/hybrid ranking, negation, score meaning."""
