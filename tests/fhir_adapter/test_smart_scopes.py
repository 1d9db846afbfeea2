from __future__ import annotations

from fhir_adapter.smart_scopes import Scope, parse_scope, parse_scopes, unreadable


def test_v1_and_v2_scopes_with_restrictions() -> None:
    assert parse_scope("system/Task.read") == Scope("system", "Task", frozenset("rs"))
    assert parse_scope("system/*.write") == Scope("system", "*", frozenset("cud"))
    assert parse_scope("user/Observation.*") == Scope("user", "Observation", frozenset("cruds"))
    restricted = parse_scope("system/Task.rs?patient=Patient/pat-1&business-status=reviewed")
    assert restricted is not None and restricted.permissions == frozenset("rs")
    assert restricted.restriction == (("patient", "Patient/pat-1"), ("business-status", "reviewed"))
    for not_a_resource_scope in ("openid", "launch/patient", "system/Task.xyz", "system/.rs",
                                 "admin/Task.rs", "system/Task"):  # fmt: skip
        assert parse_scope(not_a_resource_scope) is None
    assert [s.resource_type for s in parse_scopes(["openid", "system/Group.r"])] == ["Group"]


def test_covers_needs_the_type_and_one_of_the_letters() -> None:
    scope = parse_scope("system/Task.cu")
    assert scope is not None
    assert scope.covers("Task", "c") and scope.covers("Task", "rc")
    assert not scope.covers("Task", "rs") and not scope.covers("CarePlan", "c")
    wildcard = parse_scope("system/*.rs")
    assert wildcard is not None and wildcard.covers("Observation", "s")


def test_unreadable_names_what_no_read_scope_of_the_contexts_grants() -> None:
    needed = ("Task", "Observation", "DocumentReference", "Binary")
    contexts = ("patient", "user")

    def missing(granted: str) -> list[str]:
        return unreadable(parse_scopes(granted.split()), needed, contexts)

    for everything in ("patient/*.rs", "user/*.read", "patient/*.*", "user/*.cruds",
                       "patient/Task.r user/Observation.rs patient/DocumentReference.read "
                       "patient/Binary.r"):  # fmt: skip
        assert missing(f"openid launch/patient {everything}") == [], everything
    assert missing("") == list(needed)
    assert missing("patient/*.s patient/*.cud") == list(needed)  # search or write is not read
    assert missing("system/*.rs") == list(needed)  # not the clinician's context
    assert missing("patient/Task.rs patient/Observation.rs?category=survey "
                   "patient/DocumentReference.rs") == ["Observation", "Binary"]  # fmt: skip
