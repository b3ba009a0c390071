"""The wire protocol a device speaks: topics, frames, messages, sparse updates, the Thing Description.

`devices.wire.protocol` is the module to import; docs/protocol.md describes the same bytes.
"""
