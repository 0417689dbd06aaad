"""Building blocks shared by the JSON Schemas of NNCF 2.x config sections.

Every helper returns a plain JSON Schema (draft 7) ``dict``. Objects built with
:func:`strict_object` reject keys they do not list (``additionalProperties: false``), which is
what lets the validator suggest the closest allowed key for a typo.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

Schema = dict[str, Any]
"""A JSON Schema (draft 7) as a plain ``dict``."""


def number(description: str, *, minimum: float | None = None, maximum: float | None = None) -> Schema:
    """A JSON number, optionally bounded (bounds are inclusive).

    :param description: what the value means.
    :param minimum: smallest allowed value, if any.
    :param maximum: largest allowed value, if any.
    :return: the schema.
    """
    schema: Schema = {"type": "number", "description": description}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def level(description: str) -> Schema:
    """A compression level (a fraction of weights or filters): a number in ``[0, 1]``.

    :param description: what the level means.
    :return: the schema.
    """
    return number(description, minimum=0.0, maximum=1.0)


def integer(description: str, *, minimum: int | None = 0) -> Schema:
    """A JSON integer (``3`` or ``3.0``), by default non-negative.

    :param description: what the value means.
    :param minimum: smallest allowed value, or ``None`` for no bound.
    :return: the schema.
    """
    schema: Schema = {"type": "integer", "description": description}
    if minimum is not None:
        schema["minimum"] = minimum
    return schema


def boolean(description: str) -> Schema:
    """A JSON boolean.

    :param description: what the flag means.
    :return: the schema.
    """
    return {"type": "boolean", "description": description}


def string(description: str, enum: Sequence[str] | None = None) -> Schema:
    """A JSON string, optionally restricted to ``enum``.

    :param description: what the value means.
    :param enum: the allowed values, if restricted.
    :return: the schema.
    """
    schema: Schema = {"type": "string", "description": description}
    if enum is not None:
        schema["enum"] = list(enum)
    return schema


def array_of(items: Schema, description: str, *, min_items: int = 0) -> Schema:
    """A JSON array whose every item matches ``items``.

    :param items: the schema of one item.
    :param description: what the list means.
    :param min_items: the smallest allowed length.
    :return: the schema.
    """
    schema: Schema = {"type": "array", "items": items, "description": description}
    if min_items:
        schema["minItems"] = min_items
    return schema


def strict_object(
    properties: dict[str, Schema], description: str = "", required: Iterable[str] = ()
) -> Schema:
    """A JSON object that allows only the keys in ``properties``.

    :param properties: allowed keys and the schema of each value.
    :param description: what the object configures.
    :param required: keys that must be present.
    :return: the schema.
    """
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if description:
        schema["description"] = description
    required = list(required)
    if required:
        schema["required"] = required
    return schema


def object_or_list_of(item: Schema, description: str, *, min_items: int = 1) -> Schema:
    """Either one object matching ``item`` or a list of them, as NNCF allowed in many places.

    ``if``/``then``/``else`` (rather than ``oneOf``) keeps validation errors pointing into the
    branch the value actually took.

    :param item: the schema of one object.
    :param description: what the value means.
    :param min_items: the smallest allowed length of the list form.
    :return: the schema.
    """
    then: Schema = {"items": item}
    if min_items:
        then["minItems"] = min_items
    return {
        "type": ["object", "array"],
        "description": description,
        "if": {"type": "array"},
        "then": then,
        "else": item,
    }


SCOPES = {
    "type": ["string", "array"],
    "items": {"type": "string"},
    "description": "One scope or a list of scopes: operation names, or regular expressions "
    "when prefixed with '{re}'.",
}
"""A scope or a list of scopes (``ignored_scopes`` / ``target_scopes``)."""

SCOPING_PROPERTIES: dict[str, Schema] = {
    "ignored_scopes": {**SCOPES, "description": "Operations this algorithm must leave alone."},
    "target_scopes": {
        **SCOPES,
        "description": "If given, the only operations this algorithm applies to.",
    },
    "validate_scopes": boolean(
        "Whether every ignored/target scope must match an operation of the model (default true)."
    ),
}
"""``ignored_scopes``, ``target_scopes`` and ``validate_scopes``, common to most sections."""

COMPRESSION_LR_MULTIPLIER: dict[str, Schema] = {
    "compression_lr_multiplier": number(
        "Multiplier applied to the gradients of the algorithm's own trainable parameters.", minimum=0
    )
}
"""The ``compression_lr_multiplier`` key, allowed in sections with trainable parameters."""

BATCHNORM_ADAPTATION = strict_object(
    {
        "num_bn_adaptation_samples": integer(
            "Training samples to run to re-estimate BatchNorm statistics after compression; "
            "0 disables the adaptation."
        ),
        "num_bn_forget_samples": integer(
            "Samples for the statistics-forgetting step (older NNCF 2.x releases; ignored)."
        ),
    },
    "BatchNorm statistics adaptation run after the algorithm is applied.",
)
"""The ``batchnorm_adaptation`` initializer."""

GENERIC_INITIALIZER = strict_object(
    {"batchnorm_adaptation": BATCHNORM_ADAPTATION},
    "Initialization run once when the algorithm is applied.",
)
"""The ``initializer`` of algorithms whose only initializer is BatchNorm adaptation."""


def algorithm_section(
    name: str, properties: dict[str, Schema], description: str, required: Iterable[str] = ()
) -> Schema:
    """The schema of one ``compression`` section, for the algorithm called ``name``.

    :param name: the value of the section's ``algorithm`` key.
    :param properties: the section's other keys.
    :param description: what the algorithm does.
    :param required: keys other than ``algorithm`` that must be present.
    :return: the schema.
    """
    return strict_object(
        {"algorithm": {"const": name, "description": "Name of the algorithm."}, **properties},
        description,
        ["algorithm", *required],
    )
