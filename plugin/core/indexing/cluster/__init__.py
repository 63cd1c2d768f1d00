"""Indexing on a Ray cluster: the `ray` executor (driver mode), the `ray-job` executor (job mode), the stages."""
