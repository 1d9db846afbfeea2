"""Property: for any input, every reader returns a Transcript or raises TranscriptError.

Nothing else may escape (no KeyError, no webvtt or pydantic error, no RecursionError), since
the CLI and the pipeline turn TranscriptError, and only it, into a message for people.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mapping.dialogues import build_micro_dialogues, dialogue_record
from mapping.domain import Transcript
from mapping.errors import TranscriptError
from mapping.transcripts import (
    attachment_urls,
    read_attachment,
    read_diarized,
    read_document,
    read_plain,
    read_transcript,
    read_vtt,
)

Reader = Callable[[bytes | str], Transcript]
READERS: list[Reader] = [read_plain, read_vtt, read_diarized, read_document, read_transcript]
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
# Pieces that steer inputs into the deeper branches of each reader.
pieces = st.sampled_from(
    [
        "WEBVTT",
        "\n",
        "\n\n",
        " --> ",
        "00:00:01.000",
        "00:61:00.000",
        "1:02",
        "[00:01]",
        "<v Ana>",
        "</v>",
        "<v.x Bo>",
        "Ana: ",
        "Dr. Lee\uff1a",
        "NOTE",
        "STYLE",
        "REGION",
        "&amp;",
        "align:start",
        "size:lots",
        "\r",
        "\x00",
        "😊",
        "é",
        "\ufeff",
        ":",
        "<",
        ">",
    ]
)
vtt_like = st.lists(pieces | st.text(max_size=6), max_size=30).map("".join)
# Mostly valid pieces, so that inputs also reach the end of the readers, not only the errors.
timestamps = st.sampled_from(["00:00:01.000", "00:01.500", "01:02:03.004"] * 4 + ["1:2"])
payload_lines = st.one_of(
    st.builds("<v {}>{}</v>".format, st.text(max_size=6), st.text(max_size=12)),
    st.builds("{}: {}".format, st.sampled_from(["Ana", "Dr. Lee", "王", ""]), st.text(max_size=12)),
    st.text(max_size=12),
    pieces,
)
cues = st.builds(
    lambda ident, start, end, settings_, lines, sep: (
        f"{ident}{start} --> {end}{settings_}\n" + "\n".join(lines) + sep
    ),
    st.sampled_from(["", "1\n", "a/1-0\n"] * 3 + ["NOTE x\n"]),
    timestamps,
    timestamps,
    st.sampled_from(["", " align:start", " line:0"] * 3 + [" size:lots"]),
    st.lists(payload_lines, max_size=3),
    st.sampled_from(["\n\n", "\n\n\n"] * 4 + ["\n"]),
)
vtt_files = st.builds(
    lambda header, body: header + "".join(body),
    st.sampled_from(["WEBVTT\n\n", "WEBVTT - x\nKind: captions\n\n", "\nWEBVTT\n", "WEBVT\n\n"]),
    st.lists(cues, max_size=6),
)
segment = st.fixed_dictionaries(
    {},
    optional={
        "speaker": st.one_of(st.text(max_size=5), json_values),
        "text": st.one_of(st.text(max_size=10), json_values),
        "start": st.one_of(st.floats(), st.integers(), json_values),
        "end": st.one_of(st.floats(), st.integers(), json_values),
    },
)
segment_lists = st.lists(segment, max_size=5) | st.fixed_dictionaries(
    {"segments": st.lists(segment, max_size=5)}
)
attachment = st.fixed_dictionaries(
    {},
    optional={
        "contentType": st.sampled_from(
            [
                "text/plain",
                "text/vtt",
                "application/json",
                "text/plain; charset=latin-1",
                "text/plain; charset=nope",
                "application/pdf",
                "",
            ]
        )
        | st.text(max_size=8),
        "data": st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())
        | (vtt_files | vtt_like).map(
            lambda s: base64.b64encode(s.encode("utf-8", "replace")).decode()
        )
        | st.text(max_size=8),
        "url": st.text(max_size=10),
        "size": st.integers(min_value=-1, max_value=60),
        "hash": st.text(max_size=8),
    },
)
documents = st.one_of(
    st.fixed_dictionaries(
        {
            "resourceType": st.just("DocumentReference"),
            "status": st.sampled_from(["current", "entered-in-error", "bogus"]),
            "content": st.lists(st.fixed_dictionaries({"attachment": attachment}), max_size=3),
        }
    ),
    st.fixed_dictionaries(
        {"resourceType": st.just("Binary")},
        optional={"contentType": st.text(max_size=10), "data": st.text(max_size=10)},
    ),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)

# Whole resources whose elements may hold anything JSON can (null, numbers, lists where an
# object belongs): what an EHR or a careless client may send, not what FHIR allows.
hostile_attachment = st.one_of(
    attachment,
    json_values,
    st.fixed_dictionaries(
        {}, optional={k: json_values for k in ("contentType", "data", "url", "size", "hash")}
    ),
)
hostile_documents = st.one_of(
    st.fixed_dictionaries(
        {
            "resourceType": st.just("DocumentReference"),
            "status": st.sampled_from(["current", "current", "entered-in-error"]) | json_values,
            "content": st.lists(
                st.fixed_dictionaries({"attachment": hostile_attachment}), min_size=1, max_size=3
            )
            | json_values,
        },
        optional={"id": json_values, "subject": json_values},
    ),
    st.fixed_dictionaries(
        {"resourceType": st.just("Binary")},
        optional={k: json_values | st.text(max_size=10) for k in ("contentType", "data", "id")},
    ),
)


def _reads_or_refuses(reader: Reader, content: bytes | str) -> None:
    try:
        transcript = reader(content)
    except TranscriptError as exc:
        assert exc.position, str(exc)  # every refusal says where
        return
    assert isinstance(transcript, Transcript) and transcript.utterances
    for dialogue in build_micro_dialogues(transcript, context_turns=1):
        json.dumps(dialogue_record(dialogue), ensure_ascii=False).encode("utf-8")


@SETTINGS
@given(content=st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_bytes_and_text(content: bytes | str) -> None:
    for reader in READERS:
        _reads_or_refuses(reader, content)


@SETTINGS
@given(content=vtt_like | vtt_files)
def test_vtt_like_text(content: str) -> None:
    for reader in (read_vtt, read_plain, read_transcript):
        _reads_or_refuses(reader, content)
        _reads_or_refuses(reader, "WEBVTT\n\n" + content)


@SETTINGS
@given(data=json_values | segment_lists | documents)
def test_json_structures(data: object) -> None:
    text = json.dumps(data)
    for reader in READERS:
        _reads_or_refuses(reader, text)


@SETTINGS
@given(data=st.binary(max_size=80) | vtt_like.map(str.encode), content_type=st.text(max_size=30))
def test_fetched_attachments(data: bytes, content_type: str) -> None:
    try:
        transcript = read_attachment(data, content_type)
    except TranscriptError as exc:
        assert exc.position
        return
    assert transcript.utterances


@SETTINGS
@given(resource=hostile_documents)
@example({"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": None}]})  # noqa: E501
@example(
    {"resourceType": "DocumentReference", "status": "current",
     "content": [{"attachment": {"url": 5, "contentType": "text/plain"}}]}
)  # fmt: skip
def test_whole_documents_with_any_element_values(resource: dict[str, object]) -> None:
    """A DocumentReference or Binary as JSON text or as a parsed object (the pipeline's
    shape), whatever its elements hold: a transcript or TranscriptError, nothing else."""
    _reads_or_refuses(read_document, json.dumps(resource))
    try:
        read_document(resource)
    except TranscriptError as exc:
        assert exc.position
    try:
        attachment_urls(resource)
    except TranscriptError as exc:
        assert exc.position
