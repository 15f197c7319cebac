"""The experiment tools over runs: sweeps, and compare with its seed noise and fairness checks.
"""
