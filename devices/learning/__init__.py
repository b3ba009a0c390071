"""On-device learning: the trainable head, the online learner over the int8 backbone, fit checks, drift."""
