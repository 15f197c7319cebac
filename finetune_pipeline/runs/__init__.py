"""One run's life: run.py (prepare -> execute -> record) over the core, its folder (artifacts), resume
checkpoints and the lock, the memory check, provenance, and what a run leaves to read (report, plots).
"""
