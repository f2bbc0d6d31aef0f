"""The ``serve`` part of the chart's ``values.schema.json``, generated from ``ServiceConfig`` so the two never drift.

``helm install`` validates values against ``values.schema.json`` before rendering anything: with the service
configuration's own JSON schema under ``serve`` a misspelt option or an out-of-range number fails there, with
Helm's message naming the path. The keys the chart wires itself (addresses, backends, secrets) are removed from it,
so setting them under ``serve`` is an error that points at the chart value to use instead.

``python -m aegis_online.deploy.values_schema`` rewrites the file; a test fails when it is stale.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from aegis_online.config import ServiceConfig

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "helm" / "aegis-online" / "values.schema.json"

#: Section -> keys of that section the chart sets (None: the whole section), and the chart value to use instead.
CHART_OWNED: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "server": (("host", "port"), "service.port"),
    "store": (("kind", "redis_url", "persist", "data_dir", "max_predictions"), "redis.*"),
    "bus": (None, "kafka.*"),
    "auth": (None, "auth.*"),
    "experts": (("catalog",), "catalog.extra"),
    "ray": (None, "ray.*"),
}


def serve_schema() -> dict[str, Any]:
    """``ServiceConfig``'s JSON schema without the chart-owned keys; its ``$defs`` renamed ``Serve*``."""
    schema = ServiceConfig.model_json_schema()
    defs = {f"Serve{name}": body for name, body in schema.pop("$defs").items()}
    text = json.dumps(schema | {"$defs": defs}).replace('"#/$defs/', '"#/$defs/Serve')
    schema = json.loads(text)
    defs = schema.pop("$defs")
    for section, (keys, instead) in CHART_OWNED.items():
        if keys is None:
            schema["properties"].pop(section)
            continue
        ref = schema["properties"][section]["$ref"].rsplit("/", 1)[1]
        body = copy.deepcopy(defs[ref])
        for key in keys:
            body["properties"].pop(key, None)
        body["description"] = f"{', '.join(keys)}: set by the chart (use {instead})"
        defs[f"{ref}Values"] = body
        schema["properties"][section] = {"$ref": f"#/$defs/{ref}Values"}
    schema["description"] = (
        f"The service configuration (docs/serving.md), less what the chart wires: "
        f"{', '.join(f'{s} ({i})' for s, (_, i) in CHART_OWNED.items())}"
    )
    schema["additionalProperties"] = False
    return schema | {"$defs": defs}


def updated(values_schema: dict[str, Any]) -> dict[str, Any]:
    """``values_schema`` with ``properties.serve`` and the generated ``$defs`` replaced by fresh ones."""
    serve = serve_schema()
    defs = {k: v for k, v in values_schema.get("$defs", {}).items() if not k.startswith("Serve")}
    defs |= serve.pop("$defs")
    result = copy.deepcopy(values_schema)
    result["properties"]["serve"] = serve
    result["$defs"] = {}
    used = _referenced(result, defs)
    result["$defs"] = {name: defs[name] for name in sorted(used)}
    return result


def _referenced(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """Names of the ``$defs`` reachable from ``schema`` (the chart's own values refer to ``ServeApiKey`` too)."""
    seen: set[str] = set()
    pending = [schema]
    while pending:
        text = json.dumps(pending.pop())
        for name in defs:
            if f'"#/$defs/{name}"' in text and name not in seen:
                seen.add(name)
                pending.append(defs[name])
    return seen


def render(values_schema: dict[str, Any]) -> str:
    return json.dumps(updated(values_schema), indent=2) + "\n"


def main() -> int:
    current = SCHEMA_FILE.read_text()
    fresh = render(json.loads(current))
    if fresh != current:
        SCHEMA_FILE.write_text(fresh)
        print(f"rewrote {SCHEMA_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
