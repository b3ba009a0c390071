"""Data for the real-world use cases: realistic generators and loaders for the public data sets' formats.

Nothing is downloaded at run time. Each generator is split by device (a writer, a speaker, a
room); each loader reads the real data set's on-disk layout so a user who has the data can point
tinyfleet at it. Modules here never import TensorFlow.
"""
