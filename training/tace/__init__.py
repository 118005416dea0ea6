"""TACE world-model training: preprocessing, survival baselines and the models' data pipelines."""
