"""Clipper's model abstraction layer: cache, AIMD batching and the model-version query path.

Pure cores (:mod:`.cache`, :mod:`.batching`) plus :mod:`.model_version`, which runs
submit -> cache -> dedup -> queue -> replica loop for one model version over any
replica backend (:mod:`.backend`).
"""
