"""Kubernetes-style validation of a custom resource against its CRD's OpenAPI v3 schema, with jsonschema.

An API server validates with the CRD's `openAPIV3Schema` and, for fields the schema does not know,
drops them (pruning) or, with `kubectl apply`'s strict field validation (its default), rejects them.
Plain JSON Schema allows unknown fields, so a misspelled key would pass silently; `strict` closes
every object that lists its properties, unless the schema keeps unknown fields
(`x-kubernetes-preserve-unknown-fields`) or says what they hold (`additionalProperties`).
"""

import copy

import yaml
from jsonschema import Draft7Validator


def crd_schema(path, version: str = "v1") -> dict:
    # The CRDs are large (17k and 25k lines): libyaml's loader reads them in a fraction of the time.
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    found = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    return strict(found["schema"]["openAPIV3Schema"])


def strict(schema):
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def errors(document: dict, schema: dict) -> list[str]:
    """Every violation, as `path.to.field: message`; empty when the document is valid."""
    found = Draft7Validator(schema).iter_errors(document)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found)
