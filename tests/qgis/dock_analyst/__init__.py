"""The analyst's first hour (issue 10) on one indexed project, shared by this package's modules."""
