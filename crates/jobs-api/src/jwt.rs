//! JSON Web Tokens as the original checked and made them (VestaRestPackage's `jwt_`, PyJWT):
//! the `Authorization` header holds the token, raw (as the original's clients send it) or
//! after `Bearer `; the HMAC key is the base64-decoded `jwt_key`; HS256, HS384 and HS512 are
//! accepted (never `none`); `aud` must equal `jwt_audience`; `exp` is checked with 10 s of
//! leeway, as `jwt.decode(..., leeway=10)` did.
//!
//! A token that passed is remembered ([`Verified`]: its exact text and its `exp`, at most
//! [`VERIFIED_CAPACITY`] tokens per verifier): clients send the same token on every request,
//! and checking an HS512 signature and decoding the claims again was 7% of the gateway's CPU
//! per job submission. A remembered token is still refused once past `exp` (plus leeway);
//! a verifier made for another key or audience starts with nothing remembered.
//!
//! One deliberate difference: a token must carry `exp` (PyJWT let a token without one live
//! forever; every token the original made had one, so no client notices).
//!
//! The key itself is the core's (`jobs::config::JwtKey`): `jwt_key` from the config, or a
//! random key made on first start and kept in the data directory (0600), so `portico token`
//! and `portico serve` agree without anyone choosing a secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jobs::config::{JwtAlgorithm, JwtKey};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;

/// Seconds a token may be past its `exp` and still pass (the original's `leeway=10`).
pub const LEEWAY_SECS: u64 = 10;

/// Why a request's token was refused. Each is a 401 with vesta code 101.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("The Authorization header is missing: send a token, raw or as \"Bearer <token>\"")]
    Missing,
    #[error("The authorisation token is malformed: {0}")]
    Malformed(String),
    #[error("The authorisation token is unsigned (alg \"none\"), which is never accepted")]
    AlgNone,
    #[error("The authorisation token is signed with {0}; HS256, HS384 and HS512 are accepted")]
    UnsupportedAlgorithm(String),
    #[error("The authorisation token's signature does not match the service's key")]
    BadSignature,
    #[error("The authorisation token is for another audience")]
    WrongAudience,
    #[error("The authorisation token has expired")]
    Expired,
    #[error("The authorisation token is not valid yet (nbf)")]
    NotYetValid,
    #[error("The authorisation token has no {0} claim")]
    MissingClaim(String),
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("signing a token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// What `portico token` puts in a token (checked claims are read as a map, so a token that
/// lacks one gets "has no exp claim", not a parse error).
#[derive(Debug, Serialize)]
struct Claims {
    aud: serde_json::Value,
    exp: u64,
}

/// Tokens one verifier remembers at most; past that it forgets them all and starts again.
pub const VERIFIED_CAPACITY: usize = 1024;

/// Tokens that passed, by their exact text, with their `exp` (seconds since the epoch).
#[derive(Debug, Default)]
struct Verified(Mutex<HashMap<Box<str>, u64>>);

impl Verified {
    /// `Some(Ok)` for a remembered token still within `exp` + leeway at `now`, `Some(Err)`
    /// for one past it (then forgotten), `None` for one never seen.
    fn check(&self, token: &str, now: u64) -> Option<Result<(), AuthError>> {
        let mut tokens = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let exp = *tokens.get(token)?;
        if now > exp.saturating_add(LEEWAY_SECS) {
            tokens.remove(token);
            return Some(Err(AuthError::Expired));
        }
        Some(Ok(()))
    }

    fn remember(&self, token: &str, exp: u64) {
        let mut tokens = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= VERIFIED_CAPACITY {
            tokens.clear();
        }
        tokens.insert(token.into(), exp);
    }
}

/// Checks the `Authorization` header of requests that submit or cancel.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    bypass: bool,
    verified: Arc<Verified>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("audience", &self.validation.aud)
            .field("bypass", &self.bypass)
            .finish()
    }
}

impl Verifier {
    /// A verifier for tokens signed with `key` for `audience`; `bypass` accepts everything
    /// (the original's `BYPASS_SECURITY`).
    pub fn new(key: &JwtKey, audience: &str, bypass: bool) -> Verifier {
        Verifier::from_secret(&key.bytes, audience, bypass)
    }

    /// A verifier for an HMAC secret given as bytes.
    pub fn from_secret(secret: &[u8], audience: &str, bypass: bool) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS512);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        validation.set_audience(&[audience]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "aud"]);
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
            bypass,
            verified: Arc::default(),
        }
    }

    /// Whether checks are off.
    pub fn bypassed(&self) -> bool {
        self.bypass
    }

    /// Checks the `Authorization` header's value (`None`: the header is missing).
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        if self.bypass {
            return Ok(());
        }
        let value = authorization.ok_or(AuthError::Missing)?;
        let value = std::str::from_utf8(value)
            .map_err(|_| AuthError::Malformed("the header is not text".into()))?
            .trim();
        let token = strip_bearer(value);
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if let Some(known) = self.verified.check(token, now_secs()) {
            return known;
        }
        check_algorithm(token)?;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|error| classify(error.kind()))?
        .claims;
        // `exp` is a required claim the decode checked; a float `exp` is not remembered.
        if let Some(exp) = claims.get("exp").and_then(serde_json::Value::as_u64) {
            self.verified.remember(token, exp);
        }
        Ok(())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The token in `Bearer <token>` (any case), or the whole value (the original's raw form).
fn strip_bearer(value: &str) -> &str {
    if value.eq_ignore_ascii_case("bearer") {
        return "";
    }
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => value,
    }
}

/// Refuses `alg: none` and non-HMAC algorithms by name, before any other check, so the
/// answer says what is wrong rather than "malformed".
fn check_algorithm(token: &str) -> Result<(), AuthError> {
    let header = token
        .split('.')
        .next()
        .filter(|part| !part.is_empty())
        .ok_or_else(|| AuthError::Malformed("it is not three dot-separated parts".into()))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed("its header is not base64url".into()))?;
    let header: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::Malformed("its header is not JSON".into()))?;
    match header.get("alg").and_then(|alg| alg.as_str()) {
        None => Err(AuthError::Malformed("its header names no alg".into())),
        Some(alg) if alg.eq_ignore_ascii_case("none") => Err(AuthError::AlgNone),
        Some("HS256" | "HS384" | "HS512") => Ok(()),
        Some(other) => Err(AuthError::UnsupportedAlgorithm(other.to_string())),
    }
}

fn classify(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::UnsupportedAlgorithm("an algorithm that is not accepted".into())
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::Malformed(format!("its {claim} claim is not a number"))
        }
        ErrorKind::Base64(_) => AuthError::Malformed("a part is not base64url".into()),
        ErrorKind::Json(_) => AuthError::Malformed("a part is not the expected JSON".into()),
        ErrorKind::Utf8(_) => AuthError::Malformed("a part is not UTF-8".into()),
        ErrorKind::InvalidToken => AuthError::Malformed("it is not a JWT".into()),
        other => AuthError::Malformed(format!("{other:?}")),
    }
}

/// The algorithm named in the config (`jwt_algorithm`), HMAC only.
pub fn signing_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        _ => None,
    }
}

/// The `jsonwebtoken` algorithm of the config's `jwt_algorithm`.
pub fn algorithm_of(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Hs384 => Algorithm::HS384,
        JwtAlgorithm::Hs512 => Algorithm::HS512,
    }
}

/// A token for `audience` valid for `ttl` from now: what `portico token` prints, shaped as
/// the original's (`{"aud": ..., "exp": ...}`).
pub fn sign(
    key: &JwtKey,
    audience: &str,
    algorithm: Algorithm,
    ttl: Duration,
) -> Result<String, SignError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let claims = Claims {
        aud: serde_json::Value::String(audience.to_string()),
        exp: (now + ttl).as_secs(),
    };
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &claims,
        &EncodingKey::from_secret(&key.bytes),
    )
    .map_err(SignError::Sign)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "vJmMvm44x6RJcVXNPy6UDcSfJHOHNHrT1tKpo4IQ4MU=";

    fn verifier() -> Verifier {
        Verifier::new(&JwtKey::from_base64(KEY).unwrap(), "vlbTest", false)
    }

    fn token_with(alg: Algorithm, aud: &str, exp_offset: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = serde_json::json!({"aud": aud, "exp": now + exp_offset});
        let key = JwtKey::from_base64(KEY).unwrap();
        jsonwebtoken::encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(&key.bytes),
        )
        .unwrap()
    }

    #[test]
    fn raw_and_bearer_tokens_of_every_hmac_size_pass() {
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let token = token_with(alg, "vlbTest", 60);
            assert_eq!(verifier().check(Some(token.as_bytes())), Ok(()));
            let bearer = format!("Bearer {token}");
            assert_eq!(verifier().check(Some(bearer.as_bytes())), Ok(()));
            let lower = format!("bearer  {token}");
            assert_eq!(verifier().check(Some(lower.as_bytes())), Ok(()));
        }
    }

    #[test]
    fn each_refusal_says_why() {
        let check = |value: &str| verifier().check(Some(value.as_bytes()));
        assert_eq!(verifier().check(None), Err(AuthError::Missing));
        assert_eq!(check("Bearer "), Err(AuthError::Missing));
        assert_eq!(
            check(&token_with(Algorithm::HS512, "other", 60)),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            check(&token_with(Algorithm::HS512, "vlbTest", -60)),
            Err(AuthError::Expired)
        );
        let other_key = Verifier::new(&JwtKey::from_base64("c2VjcmV0").unwrap(), "vlbTest", false);
        let token = token_with(Algorithm::HS512, "vlbTest", 60);
        assert_eq!(
            other_key.check(Some(token.as_bytes())),
            Err(AuthError::BadSignature)
        );
        // {"alg":"none","typ":"JWT"} . {"aud":"vlbTest","exp":9999999999} . (no signature)
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJhdWQiOiJ2bGJUZXN0IiwiZXhwIjo5OTk5OTk5OTk5fQ.";
        assert_eq!(check(none), Err(AuthError::AlgNone));
        assert!(matches!(check("garbage"), Err(AuthError::Malformed(_))));
        assert!(matches!(check("a.b.c"), Err(AuthError::Malformed(_))));
        // {"alg":"RS256"}
        assert!(matches!(
            check("eyJhbGciOiJSUzI1NiJ9.e30.x"),
            Err(AuthError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn expiry_has_ten_seconds_of_leeway_and_exp_is_required() {
        assert_eq!(
            verifier().check(Some(token_with(Algorithm::HS512, "vlbTest", -5).as_bytes())),
            Ok(())
        );
        let key = JwtKey::from_base64(KEY).unwrap();
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &serde_json::json!({"aud": "vlbTest"}),
            &EncodingKey::from_secret(&key.bytes),
        )
        .unwrap();
        assert_eq!(
            verifier().check(Some(no_exp.as_bytes())),
            Err(AuthError::MissingClaim("exp".into()))
        );
    }

    #[test]
    fn bypass_accepts_anything() {
        let open = Verifier::new(&JwtKey::from_base64(KEY).unwrap(), "vlbTest", true);
        assert_eq!(open.check(None), Ok(()));
    }

    #[test]
    fn signed_tokens_verify() {
        let key = JwtKey::from_base64(KEY).unwrap();
        let token = sign(&key, "aud", Algorithm::HS512, Duration::from_secs(600)).unwrap();
        assert_eq!(
            Verifier::new(&key, "aud", false).check(Some(token.as_bytes())),
            Ok(())
        );
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS512);
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn a_remembered_token_is_still_refused_past_its_exp() {
        let verifier = verifier();
        let token = token_with(Algorithm::HS512, "vlbTest", 60);
        assert_eq!(verifier.check(Some(&bearer(&token))), Ok(()));
        assert_eq!(verifier.check(Some(&bearer(&token))), Ok(()), "remembered");
        let later = now_secs() + 60 + LEEWAY_SECS + 1;
        assert_eq!(
            verifier.verified.check(&token, later),
            Some(Err(AuthError::Expired))
        );
        assert_eq!(verifier.verified.check(&token, later), None, "forgotten");
    }

    #[test]
    fn remembering_a_token_lets_no_other_token_or_key_through() {
        let verifier = verifier();
        let token = token_with(Algorithm::HS512, "vlbTest", 60);
        assert_eq!(verifier.check(Some(&bearer(&token))), Ok(()));
        // The signature's first character (all six bits are signature bits) changed.
        let signature_at = token.rfind('.').unwrap() + 1;
        let mut tampered = token.clone();
        let other = if token[signature_at..].starts_with('A') {
            "B"
        } else {
            "A"
        };
        tampered.replace_range(signature_at..signature_at + 1, other);
        assert_eq!(
            verifier.check(Some(&bearer(&tampered))),
            Err(AuthError::BadSignature)
        );
        let other_key = Verifier::from_secret(b"another key entirely", "vlbTest", false);
        assert_eq!(
            other_key.check(Some(&bearer(&token))),
            Err(AuthError::BadSignature)
        );
        let other_audience = Verifier::new(&JwtKey::from_base64(KEY).unwrap(), "other", false);
        assert_eq!(
            other_audience.check(Some(&bearer(&token))),
            Err(AuthError::WrongAudience)
        );
    }

    #[test]
    fn remembered_tokens_stay_within_capacity() {
        let verified = Verified::default();
        for n in 0..VERIFIED_CAPACITY as u64 + 10 {
            verified.remember(&format!("token-{n}"), n);
        }
        let remembered = verified.0.lock().unwrap().len();
        assert!(remembered <= VERIFIED_CAPACITY, "{remembered}");
    }
}
