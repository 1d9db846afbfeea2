"""Role resolution: explicit hints, participant/patient names, speaker labels, fallback."""

from __future__ import annotations

import pytest

from mapping.domain import Role, RoleHints
from mapping.transcripts import resolve_roles
from mapping.transcripts.roles import name_tokens


def _roles(speakers: list[str], hints: RoleHints | None = None) -> list[tuple[Role, str]]:
    return [(d.role, d.method) for d in resolve_roles(speakers, hints or RoleHints())]


def test_explicit_wins_over_everything() -> None:
    hints = RoleHints(
        explicit={"  therapist ": Role.CLIENT, "SPEAKER_1": Role.THERAPIST},
        therapist_names=("Therapist",),
    )
    assert _roles(["Therapist", "speaker_1"], hints) == [
        (Role.CLIENT, "explicit"),
        (Role.THERAPIST, "explicit"),
    ]


@pytest.mark.parametrize(
    ("speaker", "name"),
    [
        ("Dr. Lee", "Susan Lee"),
        ("dr susan lee", "Susan Lee"),
        ("Susan Lee, PhD", "Susan Lee"),
        ("Susan Lee (she/her)", "Susan Lee"),
        ("Lee, Susan", "Susan Lee"),
        ("Ngô Thị Hương", "Huong Thi Ngo"),
        ("王小明", "王小明"),
    ],
)
def test_participant_names_match_tolerantly(speaker: str, name: str) -> None:
    hints = RoleHints(therapist_names=(name,))
    (decision,) = resolve_roles([speaker], hints)
    assert (decision.role, decision.method) == (Role.THERAPIST, "participant-name")
    assert name in decision.detail


def test_patient_name_and_exact_beats_partial() -> None:
    hints = RoleHints(therapist_names=("Susan Lee",), client_names=("Tom Lee",))
    assert _roles(["Tom Lee", "Dr. Lee"], hints) == [
        (Role.CLIENT, "patient-name"),
        # "Lee" alone fits both names equally: neither is used, the fallback decides
        (Role.THERAPIST, "fallback"),
    ]
    assert _roles(["Lee"], RoleHints(therapist_names=("Lee",), client_names=("Tom Lee",))) == [
        (Role.THERAPIST, "participant-name")
    ]


def test_names_do_not_match_unrelated_labels() -> None:
    hints = RoleHints(therapist_names=("Susan Lee",), client_names=("Maria Ortega",))
    assert _roles(["Speaker 1", "Dr.", "Sue"], hints) == [
        (Role.THERAPIST, "fallback"),
        (Role.CLIENT, "fallback"),
        (Role.OTHER, "fallback"),
    ]


@pytest.mark.parametrize(
    ("label", "role"),
    [
        ("Therapist", Role.THERAPIST),
        ("COUNSELLOR 2", Role.THERAPIST),
        ("Clinician (Dr. Lee)", Role.THERAPIST),
        ("T", Role.THERAPIST),
        ("Patient", Role.CLIENT),
        ("client_a", Role.CLIENT),
        ("C", Role.CLIENT),
        ("Interpreter", Role.OTHER),
    ],
)
def test_speaker_labels(label: str, role: Role) -> None:
    (decision,) = resolve_roles([label], RoleHints())
    assert (decision.role, decision.method) == (role, "speaker-label")


def test_contradictory_label_falls_back() -> None:
    assert _roles(["Therapist or Client"]) == [(Role.THERAPIST, "fallback")]


def test_fallback_fills_the_free_roles_in_order() -> None:
    assert _roles(["Client", "Ana", "Ben", "Cy"]) == [
        (Role.CLIENT, "speaker-label"),
        (Role.THERAPIST, "fallback"),
        (Role.OTHER, "fallback"),
        (Role.OTHER, "fallback"),
    ]
    assert _roles(["Interpreter", "Ana", "Ben"]) == [
        (Role.OTHER, "speaker-label"),
        (Role.THERAPIST, "fallback"),
        (Role.CLIENT, "fallback"),
    ]


def test_name_tokens() -> None:
    assert name_tokens("Dr. José  Ortega-Ruiz, LCSW") == {"jose", "ortega", "ruiz"}
    assert name_tokens("Dr.") == frozenset()
