"""The plumbing every layer uses: the log format, fault points for the tests, Ctrl-C/SIGTERM
between steps, the processes of torchrun, and files written atomically. Imports nothing else of the package
but errors.
"""
