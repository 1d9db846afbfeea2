"""Speaker labels -> roles, with the method recorded for each speaker.

Every speaker gets the first decision that applies, in this order:

1. ``explicit``: `RoleHints.explicit` names the label (case and spacing ignored).
2. ``participant-name`` / ``patient-name``: the label matches one of `RoleHints.therapist_names`
   (the Encounter's participants) or `RoleHints.client_names` (its Patient). Matching ignores
   case, accents, punctuation and titles or credentials (Dr., Ms., PhD, LCSW, ...), and accepts
   a label whose name words are all in the name or the reverse ("Dr. Lee" matches "Susan Lee",
   "Susan Lee (she/her)" matches "Susan Lee"). An exact match beats a partial one; when a label
   matches a therapist and a client name equally well (a shared family name) neither is used.
3. ``speaker-label``: the label names a role: therapist, counselor/counsellor, clinician,
   psychotherapist, psychologist, psychiatrist, provider (or just "T") -> therapist;
   client, patient (or just "C") -> client; interpreter, translator, observer, scribe -> other.
4. ``fallback``: speakers still undecided, in order of first appearance, fill the roles nobody
   holds yet: therapist first (sessions are opened by the clinician), then client; any further
   undecided speaker is ``other``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from mapping.domain import Role, RoleDecision, RoleHints

# Titles, suffixes and credentials that a speaker label may add to or drop from a name.
_TITLES = frozenset(
    {
        *("dr", "doctor", "mr", "mrs", "ms", "miss", "mx", "prof", "professor", "rev", "sr"),
        *("jr", "ii", "iii", "phd", "psyd", "md", "lcsw", "lmsw", "lpc", "lpcc", "lmft"),
        *("lmhc", "lcpc", "rn", "np", "msw", "msc"),
    }
)
_LABEL_ROLES: dict[str, Role] = {
    **dict.fromkeys(
        (
            *("therapist", "counselor", "counsellor", "clinician", "psychotherapist"),
            *("psychologist", "psychiatrist", "provider"),
        ),
        Role.THERAPIST,
    ),
    **dict.fromkeys(["client", "patient"], Role.CLIENT),
    **dict.fromkeys(["interpreter", "translator", "observer", "scribe"], Role.OTHER),
}
# One-letter labels of research transcripts ("T: ...", "C: ...").
_LETTER_ROLES: dict[str, Role] = {"t": Role.THERAPIST, "c": Role.CLIENT}
_NON_WORD = re.compile(r"[\W_]+")


def speaker_key(label: str) -> str:
    """The identity of a speaker label: case and spacing do not make a new speaker."""
    return " ".join(label.split()).casefold()


def resolve_roles(speakers: Sequence[str], hints: RoleHints) -> tuple[RoleDecision, ...]:
    """Decide the role of each speaker (in first-appearance order); see the module docstring."""
    explicit = {speaker_key(label): role for label, role in hints.explicit.items()}
    decided: dict[str, RoleDecision] = {}
    for speaker in speakers:
        decision = _by_explicit(speaker, explicit) or _by_name(speaker, hints) or _by_label(speaker)
        if decision is not None:
            decided[speaker] = decision
    held = {d.role for d in decided.values()}
    missing = [role for role in (Role.THERAPIST, Role.CLIENT) if role not in held]
    decisions = []
    for speaker in speakers:
        if speaker not in decided:
            role = missing.pop(0) if missing else Role.OTHER
            detail = (
                "no hint or label; undecided speakers take therapist, then client, "
                "in order of appearance"
                if role is not Role.OTHER
                else "no hint or label, and therapist and client are taken"
            )
            decided[speaker] = RoleDecision(speaker, role, "fallback", detail)
        decisions.append(decided[speaker])
    return tuple(decisions)


def _by_explicit(speaker: str, explicit: dict[str, Role]) -> RoleDecision | None:
    role = explicit.get(speaker_key(speaker))
    if role is None:
        return None
    return RoleDecision(speaker, role, "explicit", "named in the role hints")


def _by_name(speaker: str, hints: RoleHints) -> RoleDecision | None:
    tokens = name_tokens(speaker)
    if not tokens:
        return None
    therapist = _best_match(tokens, hints.therapist_names)
    client = _best_match(tokens, hints.client_names)
    if therapist[0] == client[0]:  # no match, or equally good for both roles
        return None
    if therapist[0] > client[0]:
        detail = f"matches {therapist[1]!r}"
        return RoleDecision(speaker, Role.THERAPIST, "participant-name", detail)
    return RoleDecision(speaker, Role.CLIENT, "patient-name", f"matches {client[1]!r}")


def _best_match(tokens: frozenset[str], names: Sequence[str]) -> tuple[int, str]:
    """(2 exact / 1 partial / 0 none, the name matched)."""
    best = (0, "")
    for name in names:
        other = name_tokens(name)
        if not other:
            continue
        score = 2 if tokens == other else 1 if tokens <= other or other <= tokens else 0
        if score > best[0]:
            best = (score, name)
    return best


def name_tokens(name: str) -> frozenset[str]:
    """The words of a name without case, accents, punctuation, titles or credentials."""
    folded = unicodedata.normalize("NFKD", name.casefold())
    bare = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return frozenset(t for t in _NON_WORD.split(bare) if t and t not in _TITLES)


def _by_label(speaker: str) -> RoleDecision | None:
    words = [w for w in _NON_WORD.split(speaker.casefold()) if w]
    if len(words) == 1 and words[0] in _LETTER_ROLES:
        return RoleDecision(speaker, _LETTER_ROLES[words[0]], "speaker-label", "one-letter label")
    named = [w for w in words if w in _LABEL_ROLES]
    if len({_LABEL_ROLES[w] for w in named}) != 1:  # none, or contradictory words
        return None
    word = named[0]
    return RoleDecision(speaker, _LABEL_ROLES[word], "speaker-label", f"label says {word!r}")
