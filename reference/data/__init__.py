"""Chapter 4's data pipeline: the course corpus and the cleaning stages the survey names.

Survey section 2.1 (dataset preparation and preprocessing). `corpus` loads and mixes the three
embedded sources (Shakespeare's plays, the Python documentation topics, the Python standard
library's source); `quality`, `dedup`, `privacy` and `toxicity` are the filters; `pipeline`
chains them with per-stage statistics; `samples` plants what the filters should find (noise,
near-duplicates, personal data, hostile sentences) so that the chapter can measure them.
"""
