"""Serializer fields and a JSON parser that refuse what PostgreSQL cannot store, as a 400.

DRF's ``CharField`` already refuses NUL characters and lone surrogates. These cover the rest:
JSON values (NUL characters and lone surrogates in texts and keys, NaN and infinities, deep
nesting), slugs looked up in the database (a NUL there is a database error, not a miss), and
request bodies nested deeper than Python's JSON decoder can recurse.
"""

from __future__ import annotations

from django.db import models
from rest_framework import parsers, serializers
from rest_framework.exceptions import ParseError

from annotation_app.storable import json_problem, text_problem


def storable_json(value) -> None:
    """Validator: ``value`` fits a PostgreSQL JSON column."""
    problem = json_problem(value)
    if problem:
        raise serializers.ValidationError(problem, code="unstorable")


class StorableJSONField(serializers.JSONField):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.validators.append(storable_json)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if value is None and not self.allow_null:  # "null" as form text reads as None
            self.fail("null")
        return value


class StorableSlugRelatedField(serializers.SlugRelatedField):
    """A ``SlugRelatedField`` whose value is checked before it is looked up."""

    def to_internal_value(self, data):
        problem = text_problem(data) if isinstance(data, str) else None
        if problem:
            raise serializers.ValidationError(f"the value {problem}", code="invalid")
        return super().to_internal_value(data)


class StorableModelSerializer(serializers.ModelSerializer):
    """A ``ModelSerializer`` whose model JSON fields are checked as :func:`storable_json`."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.JSONField: StorableJSONField,
    }


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser; a body nested too deeply for the decoder is a 400, not a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None
