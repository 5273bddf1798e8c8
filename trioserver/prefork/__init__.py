"""The prefork master and its OS seam: processes, signals, pidfile, daemon, the worker pipe."""
