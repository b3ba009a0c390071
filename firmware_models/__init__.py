"""Tiny Keras models for TinyML use cases, full-int8 TFLite conversion, inspection and export.

Importing this package never imports TensorFlow: training code imports it lazily, so that
`devices` (which runs on gateways without TensorFlow) can reuse the interpreter loader and
use-case data generators.
"""
