"""The running process: service lifecycle, scheduler, executor, folder watcher, control API.

Also metrics, sd_notify, logging and the read-only view the control API serves.
May import every layer below it (jobs, timing, ductape, store); never `runner.cli`.
"""
