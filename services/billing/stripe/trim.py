#!/usr/bin/env python3
"""Trims Stripe's OpenAPI description (spec3.json) to what the billing adapter uses.

Usage: trim.py SPEC3_JSON > openapi.json

Keeps the operations in OPERATIONS and the schemas in SCHEMAS; any other schema they
refer to is replaced by {"x-trimmed": "<name>"} (which the contract server takes as
"anything"). Descriptions are dropped (they are Stripe's prose, not the contract),
except the one line of each kept operation's summary. See README.md.
"""

import json
import sys

# The operations the adapter calls (method, path).
OPERATIONS = [
    ("post", "/v1/customers"),
    ("get", "/v1/customers/{customer}"),
    ("get", "/v1/customers/{customer}/payment_methods"),
    ("post", "/v1/checkout/sessions"),
    ("post", "/v1/payment_intents"),
]

# The schemas kept whole: what those operations answer, the error shape, and the
# event (webhook) envelope with the objects billing reads from it.
SCHEMAS = [
    "address",
    "api_errors",
    "billing_details",
    "checkout.session",
    "customer",
    "deleted_customer",
    "error",
    "event",
    "invoice_setting_customer_setting",
    "notification_event_data",
    "notification_event_request",
    "payment_intent",
    "payment_method",
    "payment_pages_checkout_session_automatic_tax",
    "payment_pages_checkout_session_custom_text",
    "payment_pages_checkout_session_custom_text_position",
    "setup_intent",
]

DROP = {"description", "summary"}


# Maps whose keys are names (of properties, parameters' encodings), not keywords: a
# property called "description" is kept.
NAMES = {"properties", "encoding"}


def strip(node, kept, trimmed, names=False):
    if isinstance(node, dict):
        if "$ref" in node and not names:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name in kept:
                return {"$ref": node["$ref"]}
            trimmed.add(name)
            return {"x-trimmed": name}
        return {
            k: strip(v, kept, trimmed, names=(k in NAMES and not names))
            for k, v in node.items()
            if names or k not in DROP
        }
    if isinstance(node, list):
        return [strip(v, kept, trimmed) for v in node]
    return node


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    kept = set(SCHEMAS)
    trimmed = set()
    paths = {}
    for method, path in OPERATIONS:
        op = spec["paths"][path][method]
        out = strip(op, kept, trimmed)
        out["summary"] = op.get("summary", "")
        paths.setdefault(path, {})[method] = out
    schemas = {name: strip(spec["components"]["schemas"][name], kept, trimmed) for name in SCHEMAS}
    result = {
        "openapi": spec["openapi"],
        "info": {
            "title": spec["info"]["title"],
            "version": spec["info"]["version"],
            "x-trimmed-from": "spec3.json of Stripe's OpenAPI description (see README.md)",
            "x-trimmed-schemas": sorted(trimmed),
        },
        "servers": spec.get("servers", []),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": spec["components"].get("securitySchemes", {}),
        },
        "security": spec.get("security", []),
    }
    json.dump(result, sys.stdout, indent=1, sort_keys=True, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
