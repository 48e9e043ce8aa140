"""Compare protobuf descriptors: our .proto files against a real client's, field by field.

For tests that pin wire compatibility (tritonclient, tensorflow-serving-api): names, numbers,
types, repetition, message types and oneofs must all agree, nested messages included.
"""

from __future__ import annotations

from typing import Any


def fields(message: Any) -> dict[str, tuple[Any, ...]]:
    """What the wire depends on, per field of a message descriptor."""
    return {
        f.name: (
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else None,
            f.containing_oneof.name if f.containing_oneof else None,
        )
        for f in message.fields
    }


def assert_same_message(ours: Any, theirs: Any) -> None:
    """AssertionError naming the message where ``ours`` and ``theirs`` differ on the wire."""
    assert ours.full_name == theirs.full_name
    assert fields(ours) == fields(theirs), ours.full_name
    for nested in ours.nested_types:
        assert_same_message(nested, theirs.nested_types_by_name[nested.name])
