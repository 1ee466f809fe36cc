"""Talking to Ductape: wire format (wire), job -> operation (operations), HTTP client (client).

Also the emulator, a local SDK proxy speaking the same wire for demos and tests.
May import `runner.errors`, `runner.jobs` and `runner.timing`; never the store or daemon.
"""
