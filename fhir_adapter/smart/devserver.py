"""A development EHR for the clinician app: a SMART/OIDC authorization server and a read-only
FHIR API over the bundled sample export, mounted under /dev-ehr by `homework-fhir demo` only.

Built from authlib's server components (`AuthorizationServer`, `AuthorizationCodeGrant`, PKCE
`CodeChallenge(required=True)`, OpenID Connect `OpenIDCode`), so the launch the app makes
against it is the real protocol end to end; only the framework glue (Starlette requests and
responses) is ours, as authlib ships glue for Flask and Django alone. Chosen over the
`oidc-provider` npm package because it runs in the demo's own process with the library the
client side already uses: no Node runtime, no second process to start.

    GET  /dev-ehr/fhir/.well-known/smart-configuration   SMART discovery (iss = /dev-ehr/fhir)
    GET  /dev-ehr/.well-known/openid-configuration       OIDC discovery
    GET  /dev-ehr/jwks                                   the id_token signing key (ES384)
    GET  /dev-ehr/authorize      sign-in and consent for the sample clinician (Dr. Amara Okafor)
    POST /dev-ehr/authorize      allow or deny (CSRF: the pending request's own token)
    POST /dev-ehr/token          code + code_verifier (client_secret_basic, or private_key_jwt
                                 for an app registered with its JWK Set) -> access token,
                                 id_token, `patient`, `encounter`
    GET  /dev-ehr/fhir/{type}/{id}   a sample resource of the token's patient (Bearer required;
                                     a Binary by its securityContext's patient)

The `launch` value is the launch context itself, base64url JSON {"patient", "encounter",
"appContext"}, as SMART's own development launcher encodes it; the server checks patient and
encounter against the sample data. `appContext` is what an EHR keeps from a CDS Hooks card's
`smart` link (CDS Hooks 2.0: the EHR sends it to the app in the access token response,
alongside the other launch parameters); the token response carries it as given. A standalone
launch (no `launch`) picks the patient on the consent page.

`fhir_base` (default: this server's own `/dev-ehr/fhir`) is the FHIR server the tokens are for:
the `aud` an authorization request must name, and the base of the clinician's `fhirUser`. Given
another server's base (tests: sekmet-fhir, which has no authorization endpoint of its own), this
is the authorization server of that EHR, its patients and encounters taken from `export`.
Everything lives in this process's memory. Development only: `demo` runs with environment =
"development".
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidClientError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin
from authlib.oidc.core.grants import OpenIDCode
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

from fhir_adapter.bulk import read_export
from fhir_adapter.web.dashboard import _WEB, SecuredRoute
from fhir_adapter.web.sessions import new_token, same_origin, same_value

logger = logging.getLogger(__name__)

PREFIX = "/dev-ehr"
CLINICIAN = {"id": "prac-1", "name": "Dr. Amara Okafor"}
CODE_TTL_S = 300
TOKEN_TTL_S = 3600
CONSENT_TTL_S = 600
SCOPES = [
    "launch", "launch/patient", "launch/encounter", "openid", "fhirUser", "profile",
    "online_access", "patient/*.rs", "patient/*.read",
]  # fmt: skip


def encode_launch(
    patient: str, encounter: str | None = None, app_context: str | None = None
) -> str:
    body = {"patient": patient, **({"encounter": encounter} if encounter else {}),
            **({"appContext": app_context} if app_context is not None else {})}  # fmt: skip
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


def _decode_launch(value: str) -> dict[str, str] | None:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        body = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return {k: str(v) for k, v in body.items()} if isinstance(body, dict) else None


@dataclass(frozen=True)
class DevClient(ClientMixin):  # type: ignore[misc]
    """The app as registered: a client secret (client_secret_basic), or, with `jwks`, the
    public JWK Set it signs its client assertions with (private_key_jwt, as Epic and Oracle
    Health register confidential SMART apps)."""

    client_id: str
    client_secret: str
    redirect_uri: str
    jwks: dict[str, Any] | None = None

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in scope.split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        registered = "private_key_jwt" if self.jwks is not None else "client_secret_basic"
        return endpoint != "token" or method == registered

    def check_client_secret(self, client_secret: str) -> bool:
        if self.jwks is not None:
            return False
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class DevCode(AuthorizationCodeMixin):  # type: ignore[misc]
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    patient: str
    encounter: str | None
    app_context: str | None = None
    auth_time: int = field(default_factory=lambda: int(time.time()))
    expires: float = field(default_factory=lambda: time.time() + CODE_TTL_S)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


@dataclass(frozen=True)
class Grant:
    patient: str
    encounter: str | None
    scope: str
    expires: float


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, method: str, uri: str, headers: Any, data: dict[str, str]) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self._data = data
        self.payload = BasicOAuth2Payload(data)

    @property
    def args(self) -> dict[str, str]:
        return self._data

    @property
    def form(self) -> dict[str, str]:
        return self._data


class DevEhr:
    """The dev EHR's state: its client, sample data, signing key, codes and tokens."""

    def __init__(
        self,
        base_url: str,
        export: Path,
        client: DevClient,
        fhir_base: str | None = None,
        clinician: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")  # .../dev-ehr
        self.client = client
        self._fhir_base = (fhir_base or f"{self.base_url}/fhir").rstrip("/")
        self.clinician = clinician or CLINICIAN
        self.key = ECKey.generate_key("P-384", parameters={"kid": "dev-ehr-1", "alg": "ES384"})
        self.data: dict[str, dict[str, dict[str, Any]]] = {}
        for resource in read_export(export):
            self.data.setdefault(resource["resourceType"], {})[resource["id"]] = resource
        self.codes: dict[str, DevCode] = {}
        self.tokens: dict[str, Grant] = {}
        self.pending: dict[str, tuple[float, dict[str, str], str]] = {}  # id -> (exp, args, csrf)
        self.server = self._server()

    @property
    def fhir_base(self) -> str:
        """The FHIR server this authorization server issues tokens for (the `aud`)."""
        return self._fhir_base

    def owner(self, resource: dict[str, Any], depth: int = 0) -> str | None:
        """The patient a resource belongs to: itself, its subject or patient, or for a Binary
        the owner of its `securityContext` (a transcript kept as a Binary belongs to the
        patient of its DocumentReference)."""
        kind = resource.get("resourceType")
        if kind == "Patient":
            return f"Patient/{resource['id']}"
        if kind == "Binary" and depth == 0:
            context = str((resource.get("securityContext") or {}).get("reference") or "")
            parent_type, _, parent_id = context.partition("/")
            parent = self.data.get(parent_type, {}).get(parent_id)
            return self.owner(parent, depth + 1) if parent is not None else None
        found = (resource.get("subject") or resource.get("patient") or {}).get("reference")
        return str(found) if found else None

    def patients(self) -> list[dict[str, Any]]:
        return sorted(self.data.get("Patient", {}).values(), key=lambda p: p["id"])

    def context(self, launch: str | None, chosen: str | None) -> dict[str, str] | None:
        """The launch context of a request: from `launch`, or the patient chosen at consent."""
        if launch:
            found = _decode_launch(launch)
        elif chosen:
            found = {"patient": chosen}
        else:
            return None
        if not found or found.get("patient") not in self.data.get("Patient", {}):
            return None
        encounter = found.get("encounter")
        if encounter is not None:
            resource = self.data.get("Encounter", {}).get(encounter)
            if (
                resource is None
                or resource["subject"]["reference"] != f"Patient/{found['patient']}"
            ):
                return None
        return found

    def _server(self) -> AuthorizationServer:
        ehr = self

        class Server(AuthorizationServer):  # type: ignore[misc]
            def query_client(self, client_id: str) -> DevClient | None:
                return ehr.client if client_id == ehr.client.client_id else None

            def save_token(self, token: dict[str, Any], request: Any) -> None:
                code: DevCode = request.authorization_code
                ehr.tokens[token["access_token"]] = Grant(
                    code.patient, code.encounter, token.get("scope", ""),
                    time.time() + int(token.get("expires_in", TOKEN_TTL_S)),
                )  # fmt: skip

            def create_oauth2_request(self, request: Any) -> Any:
                return request

            def handle_response(self, status: int, body: Any, headers: Any) -> Response:
                headers = dict(headers)
                if isinstance(body, dict):
                    return JSONResponse(body, status_code=status, headers=headers)
                return Response(body or b"", status_code=status, headers=headers)

            def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
                return None

        class ClientAssertion(JWTBearerClientAssertion):  # type: ignore[misc]
            """private_key_jwt (RFC 7523, SMART's asymmetric client authentication): the
            assertion's signature against the client's registered keys; aud the token URL."""

            CLIENT_AUTH_METHOD = "private_key_jwt"

            def __init__(self) -> None:
                super().__init__(validate_jti=True)
                self._seen: dict[str, float] = {}

            def process_assertion_claims(self, assertion: str, key: Any) -> Any:
                # SMART's algorithms (joserfc's default list leaves RS384 and ES384 out).
                try:
                    token = jwt.decode(assertion, key, algorithms=["RS384", "ES384"])
                except JoseError as exc:
                    raise InvalidClientError(description=exc.description) from exc
                self.verify_claims(token.claims)
                # SMART: an assertion expires no more than five minutes after it is made.
                if float(token.claims["exp"]) > time.time() + 300 + self.leeway:
                    raise InvalidClientError(description="exp more than 5 minutes ahead")
                return token.claims

            def get_audiences(self) -> list[str]:
                return [f"{ehr.base_url}/token"]

            def resolve_client_public_key(self, client: DevClient) -> KeySet:
                if client.jwks is None:
                    raise InvalidClientError(description="client registered with a secret")
                return KeySet.import_key_set(client.jwks)  # type: ignore[arg-type]

            def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
                now = time.time()
                self._seen = {k: v for k, v in self._seen.items() if v > now}
                if jti in self._seen:
                    return False
                self._seen[jti] = float(claims.get("exp") or now + 300)
                return True

        class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "private_key_jwt")

            def save_authorization_code(self, code: str, request: Any) -> None:
                data = request.payload.data
                context = ehr.context(data.get("launch"), data.get("chosen_patient")) or {}
                ehr.codes[code] = DevCode(
                    code=code,
                    client_id=request.client.get_client_id(),
                    redirect_uri=request.payload.redirect_uri,
                    scope=request.payload.scope,
                    nonce=data.get("nonce"),
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                    patient=context.get("patient", ""),
                    encounter=context.get("encounter"),
                    app_context=context.get("appContext"),
                )

            def query_authorization_code(self, code: str, client: DevClient) -> DevCode | None:
                found = ehr.codes.get(code)
                if found and found.client_id == client.client_id and found.expires > time.time():
                    return found
                return None

            def delete_authorization_code(self, authorization_code: DevCode) -> None:
                ehr.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: DevCode) -> dict[str, str]:
                return ehr.clinician

            def create_token_response(self) -> tuple[int, dict[str, Any], Any]:
                status, token, headers = super().create_token_response()
                code: DevCode = self.request.authorization_code
                token["patient"] = code.patient
                if code.encounter:
                    token["encounter"] = code.encounter
                if code.app_context is not None:
                    token["appContext"] = code.app_context
                return status, token, headers

        class OpenId(OpenIDCode):  # type: ignore[misc]
            def resolve_client_private_key(self, client: DevClient) -> ECKey:
                return ehr.key

            def get_client_algorithm(self, client: DevClient) -> str:
                return "ES384"

            def get_encode_header(self, client: DevClient) -> dict[str, str]:
                return {"alg": "ES384", "kid": "dev-ehr-1"}

            def get_client_claims(self, client: DevClient) -> dict[str, Any]:
                return {"iss": ehr.base_url, "aud": [client.client_id]}

            def exists_nonce(self, nonce: str, request: Any) -> bool:
                return any(c.nonce == nonce for c in ehr.codes.values())

            def generate_user_info(self, user: dict[str, str], scope: str) -> dict[str, str]:
                return {
                    "sub": user["id"],
                    "name": user["name"],
                    "fhirUser": f"{ehr.fhir_base}/Practitioner/{user['id']}",
                }

        server = Server(scopes_supported=SCOPES)
        server.register_token_generator(
            "default", BearerTokenGenerator(lambda **_: new_token(),
                                            expires_generator=lambda *_: TOKEN_TTL_S)
        )  # fmt: skip
        server.register_client_auth_method("private_key_jwt", ClientAssertion())
        server.register_grant(CodeGrant, [CodeChallenge(required=True), OpenId(require_nonce=True)])
        return server

    def grant_for(self, authorization: str | None) -> Grant | None:
        if not authorization or not authorization.startswith("Bearer "):
            return None
        found = self.tokens.get(authorization.removeprefix("Bearer ").strip())
        return found if found is not None and found.expires > time.time() else None


def _outcome(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {"resourceType": "OperationOutcome",
         "issue": [{"severity": "error", "code": "security" if status in (401, 403)
                    else "not-found", "diagnostics": message}]},
        status_code=status, media_type="application/fhir+json",
    )  # fmt: skip


def dev_ehr_router(ehr: DevEhr) -> APIRouter:
    # authlib logs issued tokens at debug level; this server's tokens stay out of any log.
    logging.getLogger("authlib").setLevel(logging.INFO)
    router = APIRouter(prefix=PREFIX, include_in_schema=False, route_class=SecuredRoute)
    templates = Jinja2Templates(directory=_WEB / "templates")

    @router.get("/fhir/.well-known/smart-configuration")
    def smart_configuration() -> JSONResponse:
        return JSONResponse(
            {
                "issuer": ehr.base_url,
                "jwks_uri": f"{ehr.base_url}/jwks",
                "authorization_endpoint": f"{ehr.base_url}/authorize",
                "token_endpoint": f"{ehr.base_url}/token",
                "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                          "private_key_jwt"],
                "grant_types_supported": ["authorization_code"],
                "scopes_supported": SCOPES,
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "capabilities": [
                    "launch-ehr", "launch-standalone", "client-confidential-symmetric",
                    "client-confidential-asymmetric",
                    "context-ehr-patient", "context-ehr-encounter", "context-standalone-patient",
                    "sso-openid-connect", "permission-patient", "permission-v2",
                ],
            }
        )  # fmt: skip

    @router.get("/.well-known/openid-configuration")
    def openid_configuration() -> JSONResponse:
        return JSONResponse(
            {
                "issuer": ehr.base_url,
                "jwks_uri": f"{ehr.base_url}/jwks",
                "authorization_endpoint": f"{ehr.base_url}/authorize",
                "token_endpoint": f"{ehr.base_url}/token",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["ES384"],
            }
        )

    @router.get("/jwks")
    def jwks() -> JSONResponse:
        return JSONResponse({"keys": [ehr.key.as_dict(private=False)]})

    def consent_page(request: Request, pending_id: str, args: dict[str, str], csrf: str,
                     error: str | None = None, status: int = 200) -> Response:  # fmt: skip
        context = ehr.context(args.get("launch"), None)
        return templates.TemplateResponse(
            request,
            "dev_ehr_authorize.html",
            {
                "base": f"{request.scope.get('root_path', '')}/smart",
                "pending": pending_id,
                "csrf": csrf,
                "clinician": ehr.clinician,
                "scopes": args.get("scope", "").split(),
                "context": context,
                "patients": ehr.patients() if context is None else [],
                "error": error,
            },
            status_code=status,
        )

    @router.get("/authorize")
    def authorize(request: Request) -> Response:
        args = dict(request.query_params)
        oauth = _Request("GET", str(request.url), request.headers, args)
        try:
            ehr.server.get_consent_grant(request=oauth, end_user=None)
        except Exception as exc:  # authlib's OAuth2Error and its subclasses
            error = getattr(exc, "error", "invalid_request")
            description = getattr(exc, "description", "") or ""
            return templates.TemplateResponse(
                request, "smart_error.html",
                {"base": f"{request.scope.get('root_path', '')}/smart",
                 "title": "Authorization refused", "message": f"{error}: {description}"},
                status_code=400,
            )  # fmt: skip
        if (args.get("aud") or "").rstrip("/") != ehr.fhir_base:
            # SMART: the app names the FHIR server it wants a token for; this server's tokens
            # are for one (a token for another would be a token leaked to a third party).
            return _outcome(400, f"aud must be this EHR's FHIR base, {ehr.fhir_base}")
        if args.get("launch") and ehr.context(args["launch"], None) is None:
            return _outcome(400, "unknown launch context")
        pending_id, csrf = new_token(), new_token()
        ehr.pending[pending_id] = (time.time() + CONSENT_TTL_S, args, csrf)
        return consent_page(request, pending_id, args, csrf)

    @router.post("/authorize")
    async def decide(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        pending = ehr.pending.pop(form.get("pending", ""), None)
        if pending is None or pending[0] < time.time():
            return _outcome(400, "this sign-in page expired; start the launch again")
        _, args, csrf = pending
        if not same_origin(request) or not same_value(csrf, form.get("csrf")):
            return _outcome(403, "missing or wrong CSRF token")
        data = dict(args)
        if not args.get("launch"):
            chosen = form.get("patient", "")
            if ehr.context(None, chosen) is None:
                return _outcome(400, "choose a patient")
            data["chosen_patient"] = chosen
        oauth = _Request("GET", f"{ehr.base_url}/authorize", request.headers, data)
        grant = ehr.server.get_consent_grant(request=oauth, end_user=ehr.clinician)
        user = ehr.clinician if form.get("decision") == "allow" else None
        response: Response = ehr.server.create_authorization_response(
            request=oauth, grant_user=user, grant=grant
        )
        if isinstance(response, RedirectResponse) or response.status_code == 302:
            response.status_code = 303  # after a POST: GET the redirect_uri
        return response

    @router.post("/token")
    async def token(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        oauth = _Request("POST", str(request.url), request.headers, form)
        response: Response = ehr.server.create_token_response(request=oauth)
        return response

    @router.get("/fhir/metadata")
    def metadata() -> JSONResponse:
        return JSONResponse(
            {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
             "fhirVersion": "4.0.1", "format": ["json"], "date": "2025-01-01"},
            media_type="application/fhir+json",
        )  # fmt: skip

    @router.get("/fhir/{resource_type}/{rid}")
    def read(request: Request, resource_type: str, rid: str) -> Response:
        grant = ehr.grant_for(request.headers.get("authorization"))
        if grant is None:
            return _outcome(401, "a valid access token is required")
        resource = ehr.data.get(resource_type, {}).get(rid)
        if resource is None:
            return _outcome(404, f"{resource_type}/{rid} is not known")
        if ehr.owner(resource) != f"Patient/{grant.patient}":
            return _outcome(404, f"{resource_type}/{rid} is not known")
        return JSONResponse(resource, media_type="application/fhir+json")

    return router
