"""Errors raised by the mapping layer.

    MappingError                 anything the mapping layer refuses, with a message for people
    ├── TranscriptError          a transcript that cannot be read (names the line/cue/segment)
    │   └── AttachmentNotInlineError  a FHIR attachment holds only a url: the adapter must fetch it
    ├── QuestionnaireError       a PHQ-9/GAD-7 response that cannot be scored
    ├── ResourceError            a FHIR resource that cannot be read or would not validate
    │   └── DecisionError        a clinician decision the resource's state does not allow
    └── ViewError                a SQL on FHIR ViewDefinition that cannot run (names the element)

The CLI turns any MappingError into a one-line message and exit code 2.
"""

from __future__ import annotations


class MappingError(ValueError):
    """Base class: input the mapping layer cannot turn into what was asked."""


class TranscriptError(MappingError):
    """A transcript is empty or malformed. `position` says where (e.g. "line 12", "cue 4")."""

    def __init__(self, message: str, position: str | None = None) -> None:
        self.message = message
        self.position = position
        super().__init__(f"{message} ({position})" if position else message)


class AttachmentNotInlineError(TranscriptError):
    """The transcript attachment has a `url` but no inline `data`.

    Mapping does no IO: the adapter fetches each of `urls` (relative ones against the FHIR base)
    and passes the bytes to `mapping.transcripts.read_attachment`.
    """

    def __init__(self, message: str, urls: tuple[str, ...], position: str | None = None) -> None:
        self.urls = urls
        super().__init__(message, position)


class QuestionnaireError(MappingError):
    """A questionnaire response or screening observation cannot be scored."""


class ResourceError(MappingError):
    """A FHIR resource is not of the expected type or shape."""


class DecisionError(ResourceError):
    """A clinician decision (approve, edit, reject) that the resource's current state refuses,
    such as approving a rejected Task. The message names the resource, its state and what to do
    instead; the app shows it to the clinician."""


class ViewError(MappingError):
    """A ViewDefinition is invalid (a missing resource, bad FHIRPath, an undefined constant,
    mismatched unionAll columns), or cannot run on a resource (several values for a column
    without `collection: true`, a `where` that is not boolean). The message names the element."""
