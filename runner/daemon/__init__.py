"""The running process: service lifecycle, scheduler, executor, folder watcher, control API.

Also metrics, sd_notify, logging, the read-only view the control API serves, and the
pure review of a job-set change (`diff`, `plan`: review, consequences, outlook).
May import every layer below it (jobs, timing, ductape, store); never `runner.cli`.
"""
