"""The `ductape-runner` commands: argument parsing, control-API client, next and plan.

The top layer: may import every package; nothing imports it but `runner.__main__`.
"""
