"""The bundled sample export: valid R4B, rebuilt exactly from its sources, readable end to end.

Transcripts are read the way the detect step reads them (its `role_hints`), scores the way the
draft step scores them, and the export is staged into a real SQLite store to check that every
questionnaire and screening Observation lands on the session it belongs to.
"""

from __future__ import annotations

import base64
import itertools
import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_adapter.bulk import read_export
from fhir_adapter.pipeline.detect import role_hints
from fhir_adapter.pipeline.staging import encounter_period, stage
from fhir_adapter.pipeline.steps import Step
from fhir_adapter.samples import sample_export_dir, sample_sources_dir
from fhir_adapter.samples.build import (
    EXPORT_TYPES,
    SampleBuildError,
    Sources,
    load_sources,
    main,
    render,
    stale_files,
    write_export,
)
from fhir_adapter.store import open_store, work
from mapping.dialogues import merge_turns
from mapping.domain import HomeworkLabel, Role
from mapping.fhir.validate import problems
from mapping.scores import score_resource
from mapping.transcripts import read_document

Json = dict[str, Any]


@pytest.fixture(scope="module")
def resources() -> list[Json]:
    return list(read_export(sample_export_dir()))


@pytest.fixture(scope="module")
def by_ref(resources: list[Json]) -> dict[str, Json]:
    return {f"{r['resourceType']}/{r['id']}": r for r in resources}


@pytest.fixture(scope="module")
def sources() -> Sources:
    return load_sources()


def of_type(resources: list[Json], kind: str) -> list[Json]:
    return [r for r in resources if r["resourceType"] == kind]


def test_one_ndjson_file_per_resource_type() -> None:
    export = sample_export_dir()
    assert sorted(p.name for p in export.iterdir()) == sorted(f"{t}.ndjson" for t in EXPORT_TYPES)
    for kind in EXPORT_TYPES:
        lines = (export / f"{kind}.ndjson").read_text(encoding="utf-8").splitlines()
        assert lines, kind
        assert all(f'"resourceType":"{kind}"' in line for line in lines), kind


def test_every_resource_validates_with_r4b(resources: list[Json]) -> None:
    assert len(resources) == 3 + 2 + 9 + 9 + 8 + 6
    ids = Counter(f"{r['resourceType']}/{r['id']}" for r in resources)
    assert max(ids.values()) == 1
    for resource in resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_profiled_documents_and_observations_pass_our_profile_checks(
    resources: list[Json],
) -> None:
    # validate.problems checks the US Core DocumentReference and Screening profiles in full.
    for resource in of_type(resources, "DocumentReference") + of_type(resources, "Observation"):
        assert problems(resource) == [], resource["id"]


def test_export_is_exactly_what_build_produces(tmp_path: Path) -> None:
    written = write_export(tmp_path)
    assert {p.name for p in written} == {f"{t}.ndjson" for t in EXPORT_TYPES}
    for path in written:
        assert path.read_bytes() == (sample_export_dir() / path.name).read_bytes(), path.name
    assert stale_files() == []
    assert main(["--check"]) == 0
    # A second build gives the same bytes: nothing depends on the clock or on randomness.
    assert render() == {p.name: p.read_bytes() for p in written}


def test_check_notices_an_edited_transcript(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    shutil.copytree(sample_sources_dir(), sources)
    transcript = sources / "session-2-2.txt"
    transcript.write_text(
        transcript.read_text(encoding="utf-8") + "Zoë Ní Bhriain: Bye!\n", encoding="utf-8"
    )
    assert stale_files(sample_export_dir(), load_sources(sources)) == ["DocumentReference.ndjson"]
    assert main(["--check", "--sources", str(sources)]) == 1


def test_build_refuses_bad_sources(tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    shutil.copytree(sample_sources_dir(), sources)
    manifest = sources / "export.toml"
    original = manifest.read_text(encoding="utf-8")
    manifest.write_text(original.replace('"session-3-3.vtt"', '"session-3-4.vtt"'))
    with pytest.raises(SampleBuildError, match=r"session 3-3: transcript session-3-4\.vtt"):
        load_sources(sources)
    manifest.write_text(original.replace('"1991-07-23"', '"1991-07-32"'))
    with pytest.raises(SampleBuildError, match="Patient/pat-1 does not validate"):
        render(load_sources(sources))
    assert main(["--out", str(tmp_path / "out"), "--sources", str(sources)]) == 2
    assert not (tmp_path / "out").exists()


def test_cast_sessions_and_references(resources: list[Json], by_ref: dict[str, Json]) -> None:
    patients = of_type(resources, "Patient")
    assert any(not p["name"][0]["text"].isascii() for p in patients)
    for patient in patients:
        encounters = sorted(
            (e for e in of_type(resources, "Encounter")
             if e["subject"]["reference"] == f"Patient/{patient['id']}"),
            key=lambda e: e["period"]["start"],
        )  # fmt: skip
        assert len(encounters) == 3
        starts = []
        for start, end in map(encounter_period, encounters):
            assert start is not None and end is not None
            assert end - start == timedelta(minutes=50)
            starts.append(start)
        assert all(b - a == timedelta(weeks=1) for a, b in itertools.pairwise(starts))
        for encounter in encounters:
            assert encounter["status"] == "finished"
            assert encounter["class"]["code"] in ("AMB", "VR")
            assert encounter["subject"]["display"] == patient["name"][0]["text"]
            (participant,) = encounter["participant"]
            practitioner = by_ref[participant["individual"]["reference"]]
            assert participant["individual"]["display"] == practitioner["name"][0]["text"]
            assert encounter["serviceProvider"]["reference"] == "Organization/clinic-1"
    for doc in of_type(resources, "DocumentReference"):
        encounter = by_ref[doc["context"]["encounter"][0]["reference"]]
        assert doc["subject"]["reference"] == encounter["subject"]["reference"]
        assert doc["context"]["period"] == encounter["period"]
    for response in of_type(resources, "QuestionnaireResponse"):
        encounter = by_ref[response["encounter"]["reference"]]
        assert response["subject"]["reference"] == encounter["subject"]["reference"]


def _transcript_of(doc: Json, by_ref: dict[str, Json]) -> Any:
    encounter = by_ref[doc["context"]["encounter"][0]["reference"]]
    patient = by_ref[encounter["subject"]["reference"]]
    return read_document(doc, role_hints(encounter, patient))


def test_every_transcript_reads_and_speakers_resolve_by_name(
    resources: list[Json], by_ref: dict[str, Json]
) -> None:
    docs = of_type(resources, "DocumentReference")
    assert len(docs) == 9
    for doc in docs:
        transcript = _transcript_of(doc, by_ref)
        decided = {(d.role, d.method) for d in transcript.roles}
        assert decided == {
            (Role.THERAPIST, "participant-name"),
            (Role.CLIENT, "patient-name"),
        }, doc["id"]
        assert 25 <= len(merge_turns(transcript.utterances)) <= 60, doc["id"]


def test_transcripts_cover_every_format(resources: list[Json]) -> None:
    bodies: dict[str, list[str]] = {}
    for doc in of_type(resources, "DocumentReference"):
        attachment = doc["content"][0]["attachment"]
        media = attachment["contentType"].split(";")[0]
        bodies.setdefault(media, []).append(base64.b64decode(attachment["data"]).decode())
    assert sorted(bodies) == ["application/json", "text/plain", "text/vtt"]
    vtt = bodies["text/vtt"]
    assert any("<v " in body for body in vtt), "a Teams-style file with voice spans"
    zoom = [body for body in vtt if "<v " not in body]
    assert zoom, "a Zoom-style file with 'Name: text' cues"
    cues = [block.splitlines() for block in zoom[0].split("\n\n")[1:] if block.strip()]
    assert any(len(lines) > 3 for lines in cues), "a cue with several text lines"


def test_every_score_resource_scores(resources: list[Json], sources: Sources) -> None:
    """Each response or total scores, to the totals of the answers in export.toml."""
    expected: dict[tuple[str, str], int] = {}
    for session in sources.sessions:
        for key, answers in session.items.items():
            expected[(session.id, key)] = sum(answers)
        for key, total in session.totals.items():
            expected[(session.id, key)] = total
    scored: dict[tuple[str, str], int] = {}
    for response in of_type(resources, "QuestionnaireResponse"):
        session_id = response["encounter"]["reference"].removeprefix("Encounter/enc-")
        for score in score_resource(response):
            scored[(session_id, score.instrument.key.replace("-", ""))] = score.total
    for obs in of_type(resources, "Observation"):
        assert "encounter" not in obs  # linked by date, as Oracle Health sends them
        (score,) = score_resource(obs)
        session_id = obs["id"].removeprefix("obs-").rsplit("-", 1)[0]
        scored[(session_id, score.instrument.key.replace("-", ""))] = score.total
    assert scored == expected
    assert len({total for total in scored.values()}) > 3  # scores change over time


def test_staging_links_every_score_to_its_session(tmp_path: Path, resources: list[Json]) -> None:
    """The Observations carry no encounter: staging must place each on the session's day."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with store.session() as session:
            summary = stage(session, "sample", resources, Step.DETECT)
        assert summary.encounters_new == 9
        assert summary.unlinked == 0
        assert summary.ignored_types == {}
        with store.session() as session:
            for obs in of_type(resources, "Observation"):
                session_id = obs["id"].removeprefix("obs-").rsplit("-", 1)[0]
                linked = work.sources_for(
                    session, "sample", f"Encounter/enc-{session_id}", "Observation"
                )
                assert obs["id"] in {o["id"] for o in linked}
    finally:
        store.close()


def test_expected_story_matches_the_brief(sources: Sources) -> None:
    """Every homework kind appears; one session sets none; one later session reviews nothing."""
    sessions = sources.sessions
    kinds = {label for s in sessions for label in s.homework}
    assert kinds == set(HomeworkLabel) - {HomeworkLabel.NONE}
    assert [s.id for s in sessions if not s.homework] == ["3-3"]
    first = [s for s in sessions if s.id.endswith("-1")]
    later = [s for s in sessions if not s.id.endswith("-1")]
    assert not any(s.reviews_homework for s in first)
    assert [s.id for s in later if not s.reviews_homework] == ["2-3"]
