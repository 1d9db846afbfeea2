"""Key pairs for SMART Backend Services: generate them to PEM files, load them to sign.

SMART asks backend clients to sign with RS384 or ES384. An RS384 key is RSA (2048 bits, the
RFC 7518 minimum and what EHR vendors document); an ES384 key is EC on curve P-384. The key
id (`kid`) defaults to the key's RFC 7638 thumbprint, so it is stable and unique per key.

The private PEM is written with mode 0600 and never overwritten; the public PEM (and the
JWK built from it) is what the EHR registers, usually through our JWK Set URL.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "KeyFileError",
    "KeyFiles",
    "SigningKey",
    "generate_key_pair",
    "load_signing_key",
    "public_jwk",
]

Algorithm = Literal["RS384", "ES384"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
RSA_BITS = 2048
KID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

SigningKey = RSAKey | ECKey
_CryptoKey = (
    rsa.RSAPrivateKey | rsa.RSAPublicKey | ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey
)


class KeyFileError(ValueError):
    """A key file that is missing, unreadable, or of the wrong type for its algorithm."""


@dataclass(frozen=True)
class KeyFiles:
    """A generated key pair on disk."""

    kid: str
    algorithm: Algorithm
    private_key_file: Path
    public_key_file: Path


def _new_private_key(algorithm: Algorithm) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if algorithm == "RS384":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ec.generate_private_key(ec.SECP384R1())


def _joserfc_key(key: _CryptoKey, algorithm: Algorithm, kid: str | None) -> SigningKey:
    params: dict[str, Any] = {"alg": algorithm, "use": "sig"}
    if kid:
        params["kid"] = kid
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        jkey: SigningKey = RSAKey.import_key(key, parameters=params)  # type: ignore[arg-type]
    else:
        jkey = ECKey.import_key(key, parameters=params)  # type: ignore[arg-type]
    if not kid:
        jkey.ensure_kid()
    return jkey


def _check_kid(kid: str) -> str:
    if not KID_PATTERN.match(kid):
        raise KeyFileError(
            f"key id {kid!r} must be 1-64 characters of letters, digits, '.', '_' or '-'"
        )
    return kid


def generate_key_pair(algorithm: Algorithm, out_dir: Path, kid: str | None = None) -> KeyFiles:
    """Write `<kid>.private.pem` (0600) and `<kid>.public.pem` into `out_dir`.

    Refuses to overwrite existing files: a replaced private key locks the service out of
    every EHR that registered the old one.
    """
    if algorithm not in ALGORITHMS:
        raise KeyFileError(f"unsupported algorithm {algorithm!r}; use RS384 or ES384")
    if kid is not None:
        _check_kid(kid)
    private_key = _new_private_key(algorithm)
    jkey = _joserfc_key(private_key, algorithm, kid)
    kid = jkey.kid
    assert kid is not None  # set by ensure_kid()
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{kid}.private.pem"
    public_path = out_dir / f"{kid}.public.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise KeyFileError(f"{path} already exists; choose another --kid or directory")
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL + 0600 from the start: the private key is never readable by others, even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyFiles(kid, algorithm, private_path, public_path)


def _read_pem(path: Path, *, private: bool) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from exc
    try:
        if private:
            return serialization.load_pem_private_key(data, password=None)
        try:
            return serialization.load_pem_public_key(data)
        except ValueError:
            return serialization.load_pem_private_key(data, password=None).public_key()
    except (ValueError, TypeError) as exc:
        kind = "an unencrypted private" if private else "a public or private"
        raise KeyFileError(f"{path} is not {kind} key in PEM format") from exc


def _check_type(key: Any, algorithm: Algorithm, path: Path) -> None:
    if algorithm == "RS384":
        if not isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
            raise KeyFileError(
                f"{path} is not an RSA key; RS384 needs one (or set algorithm ES384)"
            )
        if key.key_size < RSA_BITS:
            raise KeyFileError(f"{path} is a {key.key_size}-bit RSA key; RS384 needs >= {RSA_BITS}")
        return
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        raise KeyFileError(f"{path} is not an EC key; ES384 needs a P-384 key (or set RS384)")
    if key.curve.name != "secp384r1":
        raise KeyFileError(f"{path} is an EC key on {key.curve.name}; ES384 needs P-384")


def load_signing_key(path: Path, algorithm: Algorithm, kid: str) -> SigningKey:
    """The private key in `path` as a joserfc key carrying `kid` and `alg`."""
    key = _read_pem(path, private=True)
    _check_type(key, algorithm, path)
    return _joserfc_key(key, algorithm, _check_kid(kid))


def public_jwk(path: Path, algorithm: Algorithm, kid: str) -> dict[str, Any]:
    """The public JWK for the key in `path` (a public or a private PEM)."""
    key = _read_pem(path, private=False)
    _check_type(key, algorithm, path)
    jwk = dict(_joserfc_key(key, algorithm, _check_kid(kid)).as_dict(private=False))
    jwk["key_ops"] = ["verify"]
    return jwk
