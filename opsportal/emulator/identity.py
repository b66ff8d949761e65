"""Microsoft Entra's part: the OpenID discovery document MSAL reads, the client-credentials token
endpoint, signing keys, and the checks ARM, Cost Management and Key Vault apply to a bearer
token. Tokens are RS256 JWTs signed by a key made when the emulator starts; their lifetime runs
on real time, because clients cache them by their own clock."""

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from opsportal.emulator.state import State


def keyvault_resource(vault_url: str) -> str | None:
    """The resource a vault's 401 challenge names. Key Vault's SDK accepts a challenge only for a
    resource whose host the vault's host ends with (".vault.azure.net" for real vaults); an
    emulated vault is an address of the emulator's host, so the resource is that host minus its
    first label (127.0.0.1 -> 0.0.1), same port. A host without a dot (localhost) cannot pass
    that check."""
    parts = urlsplit(vault_url)
    host = parts.hostname or ""
    if "." not in host:
        return None
    port = f":{parts.port}" if parts.port else ""
    return f"https://{host.split('.', 1)[1]}{port}"


@dataclass
class TokenCheck:
    ok: bool
    code: str = ""
    message: str = ""
    claims: dict[str, Any] | None = None


class Identity:
    def __init__(self, state: State) -> None:
        self.state = state
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex

    @property
    def base(self) -> str:
        return self.state.base_url

    def tenant_id(self) -> str:
        return self.state.tenant["id"]

    def issuer(self) -> str:
        return f"{self.base}/{self.tenant_id()}/v2.0"

    def arm_audiences(self) -> set[str]:
        return {self.base, f"{self.base}/"}

    def vault_audiences(self, vault: str) -> set[str]:
        resource = keyvault_resource(self.state.vault_urls[vault])
        return {resource, f"{resource}/"} if resource else set()

    def all_audiences(self) -> set[str]:
        found = set(self.arm_audiences())
        for vault in self.state.vault_urls:
            found |= self.vault_audiences(vault)
        return found

    # --- discovery ----------------------------------------------------------------------------
    def tenant_known(self, tenant: str) -> bool:
        return tenant.lower() == self.tenant_id().lower()

    def openid_configuration(self) -> dict[str, Any]:
        t = f"{self.base}/{self.tenant_id()}"
        return {
            "token_endpoint": f"{t}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "jwks_uri": f"{self.base}/{self.tenant_id()}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self.issuer(),
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{t}/openid/userinfo",
            "authorization_endpoint": f"{t}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{t}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{t}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "appid"],
            "tenant_region_scope": "NA",
            "cloud_instance_name": urlsplit(self.base).netloc,
        }

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    # --- tokens -------------------------------------------------------------------------------
    def token_request(
        self, tenant: str, raw_body: bytes, authorization: str = ""
    ) -> tuple[int, dict]:
        """The client-credentials grant (client secret in the body or HTTP Basic)."""
        form = {k: v[0] for k, v in parse_qs(raw_body.decode("utf-8", "replace")).items()}
        if authorization.lower().startswith("basic "):
            user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            form.setdefault("client_id", user)
            form.setdefault("client_secret", password)
        if not self.tenant_known(tenant):
            return 400, aad_error("invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return 400, aad_error(
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{form.get('grant_type')}'. "
                "The emulator issues tokens for the client credentials grant only.",
            )
        client = self.state.clients.get(form.get("client_id", "").lower())
        if client is None:
            return 400, aad_error(
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id')}' was not found in the "
                f"directory '{self.tenant_id()}'.",
            )
        if "client_assertion" in form:
            return 400, aad_error(
                "invalid_client",
                50027,
                "Client assertions (certificates) are not modelled by the emulator; use a secret.",
            )
        if form.get("client_secret") != client["secret"]:
            return 401, aad_error(
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                f"the client secret value, not the client secret ID, for a secret added to app "
                f"'{client['client_id']}'.",
            )
        scopes = form.get("scope", "").split()
        resources = [s.removesuffix("/.default") for s in scopes if s.endswith("/.default")]
        if len(resources) != 1:
            return 400, aad_error(
                "invalid_scope",
                1002012,
                f"The provided value for scope {form.get('scope')!r} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed.",
            )
        resource = resources[0]
        if resource not in self.all_audiences():
            return 400, aad_error(
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named "
                f"{self.tenant_id()}.",
            )
        lifetime = int(self.state.world.get("token_lifetime_s", 3599))
        token = self.mint(client, resource, lifetime=lifetime)
        return 200, {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }

    def mint(self, client: dict[str, Any], audience: str, *, lifetime: int) -> str:
        now = int(time.time())
        claims = {
            "aud": audience,
            "iss": self.issuer(),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": self.tenant_id(),
            "oid": client.get("object_id", client["client_id"]),
            "sub": client.get("object_id", client["client_id"]),
            "appid": client["client_id"],
            "azp": client["client_id"],
            "idtyp": "app",
            "ver": "2.0",
            "uti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def check(self, authorization: str, audiences: set[str]) -> TokenCheck:
        """A request's bearer token, as ARM judges it (codes as ARM returns them)."""
        if not authorization:
            return TokenCheck(
                False,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return TokenCheck(
                False,
                "AuthenticationFailedInvalidHeader",
                "Authentication failed. The 'Authorization' header is provided in an invalid "
                "format.",
            )
        try:
            claims = jwt.decode(
                token,
                self.key.public_key(),
                algorithms=["RS256"],
                issuer=self.issuer(),
                options={"verify_aud": False},
            )
        except jwt.ExpiredSignatureError:
            return TokenCheck(
                False,
                "ExpiredAuthenticationToken",
                "The access token expiry UTC time is earlier than current UTC time.",
            )
        except jwt.InvalidTokenError:
            return TokenCheck(False, "InvalidAuthenticationToken", "The access token is invalid.")
        if claims.get("aud") not in audiences:
            return TokenCheck(
                False,
                "InvalidAuthenticationTokenAudience",
                f"The access token has been obtained for wrong audience or resource "
                f"'{claims.get('aud')}'. It should exactly match with one of the allowed audiences "
                f"{', '.join(sorted(audiences))}.",
            )
        return TokenCheck(True, claims=claims)


def aad_error(error: str, code: int, description: str) -> dict[str, Any]:
    return {
        "error": error,
        "error_description": f"AADSTS{code}: {description}",
        "error_codes": [code],
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "trace_id": str(uuid.uuid4()),
        "correlation_id": str(uuid.uuid4()),
        "error_uri": "https://login.microsoftonline.com/error?code=" + str(code),
    }
