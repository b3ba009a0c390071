"""The directory's own Thing Description, served at `/.well-known/wot`.

It follows the Thing Model of the WoT Discovery recommendation (section "API Specification"):
`things` property, create/retrieve/update/delete/search actions, `thingCreated/Updated/Deleted`
events over SSE. Reads need no credentials (`nosec`); writes need a bearer token.
"""

from __future__ import annotations

from typing import Any

from registry.things import DISCOVERY_CONTEXT

TD_CONTEXT = "https://www.w3.org/2022/wot/td/v1.1"
HTV = "http://www.w3.org/2011/http#"
PROBLEM = {"description": "Problem details (RFC 9457)", "contentType": "application/problem+json"}


def _form(href: str, method: str, *, op: str | None = None, status: int = 200, content_type: str = "application/json",
          response_type: str | None = None, write: bool = False, errors: tuple[int, ...] = (400,)) -> dict[str, Any]:
    form: dict[str, Any] = {"href": href, "htv:methodName": method, "contentType": content_type,
                            "response": {"htv:statusCodeValue": status,
                                         "contentType": response_type or content_type},
                            "additionalResponses": [{**PROBLEM, "htv:statusCodeValue": s} for s in errors]}
    if op:
        form["op"] = op
    if write:
        form["security"] = ["bearer_sc"]
        form["additionalResponses"].append({**PROBLEM, "htv:statusCodeValue": 401})
    return form


ID_VARIABLE = {"id": {"title": "Thing Description id", "type": "string", "format": "iri-reference"}}


def directory_td(base: str, *, title: str = "tinyfleet Thing Description Directory") -> dict[str, Any]:
    """The TD of this directory with absolute URLs under `base` (e.g. http://127.0.0.1:8080)."""
    base = base.rstrip("/")

    def action(description: str, href: str, method: str, *, status: int, write: bool, variables: bool = True,
               content_type: str = "application/td+json", response: str | None = None,
               errors: tuple[int, ...] = (400,), with_input: bool = True) -> dict[str, Any]:
        a: dict[str, Any] = {"description": description,
                             "forms": [_form(href, method, op="invokeaction", status=status, content_type=content_type,
                                             response_type=response, write=write, errors=errors)]}
        if variables:
            a["uriVariables"] = ID_VARIABLE
        if with_input:
            a["input"] = {"description": "The schema is implied by the content type", "type": "object"}
        return a

    def event(kind: str) -> dict[str, Any]:
        return {"description": f"A Thing Description was {kind.split('_')[1]}",
                "uriVariables": {"diff": {"type": "boolean", "description": "Full TD (created) or merge patch "
                                          "(updated) as event data"}},
                "data": {"type": "object", "description": "Partial TD: at least the id"},
                "forms": [{"href": f"{base}/events/{kind}{{?diff}}", "op": "subscribeevent", "subprotocol": "sse",
                           "contentType": "text/event-stream", "htv:methodName": "GET"}]}

    return {
        "@context": [TD_CONTEXT, DISCOVERY_CONTEXT, {"htv": HTV}],
        "@type": "ThingDirectory",
        "id": f"{base}/.well-known/wot",
        "title": title,
        "description": "W3C WoT Discovery Directory Service API over the tinyfleet registry (embedded Oxigraph "
                       "or a SPARQL 1.1 endpoint). Reads are open; writes need a bearer token.",
        "base": base + "/",
        "securityDefinitions": {"nosec_sc": {"scheme": "nosec"},
                                "bearer_sc": {"scheme": "bearer", "in": "header", "name": "Authorization"}},
        "security": ["nosec_sc"],
        "properties": {
            "things": {
                "description": "Retrieve all Thing Descriptions, ordered by id, in pages (Link: next, canonical)",
                "type": "array", "items": {"type": "object"}, "readOnly": True,
                "uriVariables": {"offset": {"type": "number", "minimum": 0, "default": 0},
                                 "limit": {"type": "number", "minimum": 1},
                                 "format": {"type": "string", "enum": ["array", "collection"], "default": "array"}},
                "forms": [_form(f"{base}/things{{?offset,limit,format}}", "GET", op="readproperty",
                                response_type="application/ld+json")],
            },
        },
        "actions": {
            "createThing": action("Create a Thing Description with an id", f"{base}/things/{{id}}", "PUT",
                                  status=201, write=True, response="text/plain", errors=(400, 409)),
            "createAnonymousThing": action("Create a Thing Description without id (the Location header names it)",
                                           f"{base}/things", "POST", status=201, write=True, variables=False,
                                           response="text/plain"),
            "retrieveThing": {**action("Retrieve a Thing Description", f"{base}/things/{{id}}", "GET", status=200,
                                       write=False, content_type="application/json",
                                       response="application/td+json", errors=(404,), with_input=False),
                              "safe": True, "idempotent": True,
                              "output": {"description": "The (enriched) Thing Description", "type": "object"}},
            "updateThing": action("Replace a Thing Description", f"{base}/things/{{id}}", "PUT", status=204,
                                  write=True, response="text/plain", errors=(400, 404)),
            "partiallyUpdateThing": action("Merge-patch a Thing Description (RFC 7396)", f"{base}/things/{{id}}",
                                           "PATCH", status=204, write=True, content_type="application/merge-patch+json",
                                           response="text/plain", errors=(400, 404)),
            "deleteThing": action("Delete a Thing Description", f"{base}/things/{{id}}", "DELETE", status=204,
                                  write=True, content_type="application/json", response="text/plain", errors=(404,),
                                  with_input=False),
            "searchSPARQL": {"description": "Read-only SPARQL 1.1 query over the registry graph (TDs, devices, "
                                            "models, runs); SELECT/ASK answer application/json, "
                                            "CONSTRUCT/DESCRIBE application/ld+json",
                             "uriVariables": {"query": {"type": "string"}}, "safe": True, "idempotent": True,
                             "output": {"type": "object"},
                             "forms": [_form(f"{base}/search/sparql{{?query}}", "GET", op="invokeaction"),
                                       _form(f"{base}/search/sparql", "POST", op="invokeaction",
                                             content_type="application/sparql-query")]},
        },
        "events": {"thingCreated": event("thing_created"), "thingUpdated": event("thing_updated"),
                   "thingDeleted": event("thing_deleted")},
    }
