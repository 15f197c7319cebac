"""A trained run put to use: predict and evaluate (inference) and export for other tools (export/).
"""
