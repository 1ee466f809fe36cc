"""The published JSON Schema of a job file, generated from the model."""

from __future__ import annotations

import json
from typing import Any

from runner.jobs.model import JOB_ADAPTER

SCHEMA_ID = "https://ductape.app/schemas/ductape-runner/job.schema.json"
_SEED_003_RENAMES = {"product": "product_tag"}


def job_file_schema() -> dict[str, Any]:
    """A file is one job, a `jobs:` list of jobs, or one job in seed 003 spelling."""
    job = JOB_ADAPTER.json_schema(mode="validation", ref_template="#/$defs/{model}")
    defs: dict[str, Any] = job.pop("$defs", {})
    defs["Job"] = job
    defs["Seed003Job"] = _seed_003_schema(defs)
    one = {"anyOf": [{"$ref": "#/$defs/Job"}, {"$ref": "#/$defs/Seed003Job"}]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "ductape-runner job file",
        "description": "One job, or {jobs: [...]} with a name on each. "
        "Seed 000 spelling (kind + schedule) or seed 003 spelling (type + repeat).",
        "anyOf": [
            one,
            {
                "type": "object",
                "properties": {"jobs": {"type": "array", "minItems": 1, "items": one}},
                "required": ["jobs"],
                "additionalProperties": False,
            },
        ],
        "$defs": defs,
    }


def _seed_003_schema(defs: dict[str, Any]) -> dict[str, Any]:
    """Seed 003 (`processor.job.schedule`): type, product_tag, event, start_at, repeat."""
    props: dict[str, Any] = {}
    for model in defs.values():
        if "properties" in model and "kind" in model["properties"]:
            props.update(model["properties"])
    schedule = defs["Schedule"]["properties"]
    kinds = sorted({v for m in defs.values() for v in _kind_values(m)} | {"feature"})
    props.pop("kind")
    props.pop("schedule")
    props["product_tag"] = props.pop("product")
    props["type"] = {"enum": kinds, "description": "JobEventTypes (seed 003)"}
    props["start_at"] = schedule["start_at"]
    props["repeat"] = {
        "type": "object",
        "properties": {k: v for k, v in schedule.items() if k != "start_at"},
        "anyOf": [{"required": ["cron"]}, {"required": ["every"]}],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": props,
        "required": ["type"],
        "additionalProperties": False,
    }


def _kind_values(model: dict[str, Any]) -> list[str]:
    kind = model.get("properties", {}).get("kind", {})
    values = kind.get("enum") or ([kind["const"]] if "const" in kind else [])
    return [str(v) for v in values]


def render() -> str:
    return json.dumps(job_file_schema(), indent=2, sort_keys=True) + "\n"
