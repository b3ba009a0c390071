"""Vocabularies the registry speaks, and the one place where registry IRIs are minted.

Terms are reused from the published TinyML-schema (nnet), W3C WoT TD, SOSA/SSN (+ systems), S3N,
schema.org, OM units and PROV-O; `tf:` holds only what none of them has (byte-exact figures used
for matchmaking, sensor kinds, presence). IRIs are built by `mint_*` functions from validated
parts, never by scattered string concatenation, so a typo cannot create a second `//` namespace.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from rdflib import Namespace, URIRef
from rdflib.namespace import PROV, RDF, RDFS, SH, XSD, DefinedNamespace

from registry.exceptions import RegistryInputError

NNET = Namespace("https://w3id.org/tinyml-schema/neural-network-schema#")
TD = Namespace("https://www.w3.org/2019/wot/td#")
SOSA = Namespace("http://www.w3.org/ns/sosa/")
SSN = Namespace("http://www.w3.org/ns/ssn/")
SSNS = Namespace("http://www.w3.org/ns/ssn/systems/")
S3N = Namespace("http://w3id.org/s3n/")
SCHEMA = Namespace("https://schema.org/")
OM = Namespace("http://www.ontology-of-units-of-measure.org/resource/om-2/")
TF = Namespace("https://w3id.org/tinyfleet/ns#")
ID = Namespace("https://w3id.org/tinyfleet/id/")
DISCO = Namespace("https://www.w3.org/2021/wot/discovery#")  # W3C WoT Discovery ontology (registration info)
HCTL = Namespace("https://www.w3.org/2019/wot/hypermedia#")  # W3C WoT hypermedia controls (forms)

REGISTRY_GRAPH = URIRef("https://w3id.org/tinyfleet/graph/registry")
META_GRAPH = URIRef("https://w3id.org/tinyfleet/graph/meta")
"""Bookkeeping outside the registry's data: the write stamp (registry.capabilities)."""
REGISTRY_NODE = ID["registry"]

PREFIXES: dict[str, Namespace | type[DefinedNamespace]] = {
    "nnet": NNET, "td": TD, "sosa": SOSA, "ssn": SSN, "ssn-system": SSNS, "s3n": S3N,
    "schema": SCHEMA, "om": OM, "prov": PROV, "tf": TF, "tfid": ID, "rdf": RDF, "rdfs": RDFS,
    "xsd": XSD, "sh": SH, "disco": DISCO, "hctl": HCTL,
}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LOCAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# RFC 3987 forbids these in an IRI; rdflib only warns about them, SPARQL endpoints then fail late.
_BAD_IRI_CHARS = re.compile(r'[\s<>"{}|\\^`\x00-\x1f\x7f-\x9f]|%(?![0-9A-Fa-f]{2})')  # RFC 3987: no
# control characters, and '%' only as a percent-encoding (both found by `make fuzz`: Oxigraph refuses them)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def check_iri(text: str, *, what: str = "IRI") -> URIRef:
    """Return `text` as a URIRef, or raise if it is not an absolute IRI.

    Why: a malformed IRI accepted here would be written into the store and break every later
    query on the remote endpoint (which parses strictly), far from its cause.
    """
    if not text or not _SCHEME.match(text) or _BAD_IRI_CHARS.search(text):
        raise RegistryInputError(f"{what} {text!r} is not an absolute IRI")
    return URIRef(text)


def check_local_id(text: str, *, what: str = "id") -> str:
    """Return `text` if it is a safe local id (letters, digits, `._:-`, at most 128 chars)."""
    if not isinstance(text, str) or not _LOCAL_ID.match(text):
        raise RegistryInputError(f"{what} {text!r} must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    return text


def mint_model(sha256: str) -> URIRef:
    """The IRI of a model version: content addressed, so the same bytes always get the same IRI."""
    if not _SHA256.match(sha256):
        raise RegistryInputError(f"model sha256 {sha256!r} is not 64 lowercase hex digits")
    return ID[f"model/{sha256}"]


def mint_device(device_id: str) -> URIRef:
    """The IRI of a device, from its fleet-unique id."""
    return ID[f"device/{quote(check_local_id(device_id, what='device id'), safe=':')}"]


def mint_run(run_id: str) -> URIRef:
    """The IRI of a federated run (a prov:Activity)."""
    return ID[f"run/{quote(check_local_id(run_id, what='run id'), safe=':')}"]


def mint_thing_record(td_id: str) -> URIRef:
    """The IRI of the directory's record of the Thing Description whose `id` is `td_id`.

    Why a hash and not the id itself: TD ids are arbitrary IRIs, and one may be a prefix of another
    (`https://x` and `https://x/1`); records own their sub-resources by IRI prefix, so each record
    gets a fixed-length name under tinyfleet's own namespace that no other record can extend.
    """
    import hashlib

    return ID[f"thing/{hashlib.sha256(td_id.encode()).hexdigest()[:32]}"]
def mint_firmware(project_id: str) -> URIRef:
    """The IRI of a generated firmware project (a prov:Entity)."""
    return ID[f"firmware/{quote(check_local_id(project_id, what='firmware project id'), safe=':')}"]


def part(owner: URIRef, *path: str | int) -> URIRef:
    """The IRI of a node owned by `owner` (a layer, a sensor, a memory figure).

    Owned nodes share the owner's IRI as prefix, which is what lets a description be replaced as
    a whole: delete every subject under the prefix, insert the new one.
    """
    tail = "/".join(quote(str(p), safe="") for p in path)
    return URIRef(f"{owner}/{tail}")


def is_sha256(text: str) -> bool:
    """True when `text` looks like a model's content hash."""
    return bool(_SHA256.match(text))
