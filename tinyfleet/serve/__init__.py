"""`tinyfleet serve`: one HTTP server for the registry.

* a W3C WoT Thing Description Directory (Discovery's Directory Service API: `/things`, `/events`,
  `/search/sparql`, `/.well-known/wot`) over `registry.directory.ThingDirectory`;
* a read-only fleet dashboard at `/` (devices, model versions, federated runs, lineage).

Starlette + uvicorn (docs/directory.md says why). Templates and static files ship with the package:
nothing is fetched from the network at run time.
"""
