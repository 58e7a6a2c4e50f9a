"""The config's check: validate it against the JSON schema and fill in the defaults.

Owns turning a bad key into one ``config <key>: ...`` line; the schema itself
(workflow/schemas/config.schema.yaml) owns the keys, their types and defaults, and
``validate`` adds the relations between keys that a schema cannot state.
"""

from __future__ import annotations

import copy

import jsonschema
import yaml

from . import SaeError


def _with_defaults(validator_class):
    """A validator class that also fills in each property's ``default``."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if validator.is_type(instance, "object"):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


def validate(config: dict, schema_path) -> dict:
    """Fill defaults into ``config`` in place; raise SaeError naming the first bad key."""
    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "top level"
        raise SaeError(f"config {where}: {error.message}")
    shorter, side = config["images"]["shorter_side"], config["patches"]["side"]
    if shorter is not None and shorter < side:
        raise SaeError(f"config images.shorter_side: {shorter} is smaller than patches.side ({side})")
    return config
