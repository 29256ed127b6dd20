"""Experiments that put the other packages together and report on them.

- ``compare``: Matryoshka models beside their standard twins and the baselines, per dimension.
- ``advise``: which funnel configuration to use for a corpus and a model, measured.
"""
