"""The web dashboard under /ui/: jobs, one job, the folder and pictures, server-rendered.
May import the rest of runner.daemon, the store, jobs and timing; never the CLI.
Its HTML, CSS and a little JavaScript are written here and served by the daemon itself.
"""

from runner.daemon.ui.app import DaemonParts, Dashboard

__all__ = ["DaemonParts", "Dashboard"]
