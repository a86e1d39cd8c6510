"""ObjectMeta's pickled form (every stored row holds one): its field values in order,
taken in one call, read back equal, and rows pickled by the dataclass default (a list
of values, written before this form) still read."""

from __future__ import annotations

import pickle
from dataclasses import astuple, fields

from edge.cache.model import ObjectMeta


def meta() -> ObjectMeta:
    values: list[object] = [200, (("etag", '"a"'),), (("etag", '"a"'),), 1.0, 2.0, 3.0, 60.0]
    values += [0.0, 0.0, False, False, '"a"', None, "text/plain", "identity", ("k",), "", ""]
    values += [True, "www.example.com", "/a", "svc", ("set-cookie",), True]
    return ObjectMeta(*values)  # type: ignore[arg-type]


def test_the_state_is_the_field_values_in_order() -> None:
    stored = meta()
    assert stored.__getstate__() == tuple(getattr(stored, f.name) for f in fields(ObjectMeta))
    assert pickle.loads(pickle.dumps(stored)) == stored


def test_a_row_pickled_with_the_dataclass_default_state_still_reads() -> None:
    stored = meta()
    old = ObjectMeta.__new__(ObjectMeta)
    old.__setstate__(list(astuple(stored)))  # type: ignore[arg-type]
    assert old == stored
