"""The frozen harness: profiles, data, dataloader, submission and the sealed evaluator.

Nothing here is edited during research. train.py reaches it only through
`autoresearch.harness.api`.
"""
