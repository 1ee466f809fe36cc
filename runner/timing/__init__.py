"""Pure time: fire times (croniter, DST), clocks, catch-up and jitter policy, retry math.

No I/O and no clock reads outside `clock`; time is an argument. The lowest layer:
may import `runner.errors` only (the job model's types under TYPE_CHECKING).
"""
