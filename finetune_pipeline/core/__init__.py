"""The fine-tuning itself, what a student reads: config -> data (readers) -> batching -> model ->
training (the loop) -> evaluation, with the feature cache, the freeze proof and the device around them.
"""
