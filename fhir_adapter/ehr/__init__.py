"""Talking to EHRs and FHIR stores over FHIR R4.

`client.FhirClient` (one per server, one `httpx.AsyncClient` each), `auth` (SMART Backend
Services, client secret), `errors` (the hierarchy), `vendors` (Epic / Oracle Health rules as
data), `capabilities` (start-up check of the configured write targets), `keys` and `jwks`
(our signing keys and the JWK Set the EHRs fetch). Import the submodules directly; this
package imports nothing, so that `fhir_adapter.settings` can use `keys` and `vendors`.
"""
