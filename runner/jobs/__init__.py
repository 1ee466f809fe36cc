"""Job files: from a YAML or TOML file to a validated, frozen job.

Owns the model (both seed spellings), the located parsers, durations, secret references
and the published schema. May import `runner.errors` and `runner.timing` (cron checks).
"""
