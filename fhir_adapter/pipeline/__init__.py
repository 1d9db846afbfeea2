"""The pipeline: encounters in, homework drafts and review status out.

Each encounter moves through steps, each an idempotent function whose inputs and outputs
live in the database (`fhir_adapter.store`), so a crash at any point loses nothing and a rerun
finishes the work. The step boundaries are the units a distributed task queue would run; here
`runner.run_once` runs them in-process:

    poll / push / backfill  -> stage the Encounter (and, when given, its inputs)   step FETCH
    fetch                   -> stage transcript, Patient, questionnaires from EHR  step DETECT
    detect                  -> micro-dialogues -> model -> detections in state     step DRAFT
    draft                   -> CarePlan/Task/Provenance/note/... in our store,
                               review status of earlier Tasks, writes queued       step DONE
    flush (per connection)  -> the outbox drained to the EHR and care-plan store
"""

from fhir_adapter.pipeline.steps import Step

__all__ = ["Step"]
