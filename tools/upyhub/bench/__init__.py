"""`make bench`: speed and memory, each figure next to a named peer from the same run.

Every module here with a `run()` is a benchmark; `python -m upyhub.bench [NAME...]` runs them.
"""
