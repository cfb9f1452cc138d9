//! JSON Web Tokens as the original checked and made them (VestaRestPackage's `jwt_`, PyJWT):
//! the `Authorization` header holds the token, raw (as the original's clients send it) or
//! after `Bearer `; the HMAC key is the base64-decoded `jwt_key`; HS256, HS384 and HS512 are
//! accepted (never `none`); `aud` must equal `jwt_audience`; `exp` is checked with 10 s of
//! leeway, as `jwt.decode(..., leeway=10)` did.
//!
//! One deliberate difference: a token must carry `exp` (PyJWT let a token without one live
//! forever; every token the original made had one, so no client notices).
//!
//! The key itself: `jwt_key` from the config, or, when unset, a random key Portico makes on
//! first start and keeps in the data directory (`jobs/jwt.key`, mode 0600), so
//! `portico token` and `portico serve` agree without anyone choosing a secret.

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;

/// Seconds a token may be past its `exp` and still pass (the original's `leeway=10`).
pub const LEEWAY_SECS: u64 = 10;

/// Where the generated key lives, relative to the data directory.
pub const KEY_FILE: &str = "jobs/jwt.key";

/// Bytes of a generated key (HS512 wants at least its 64-byte block).
const GENERATED_KEY_BYTES: usize = 64;

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

/// Why the key could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("jwt_key is not valid base64: {0}")]
    NotBase64(base64::DecodeError),
    #[error("jwt_key decodes to no bytes")]
    Empty,
    #[error("reading the generated JWT key {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("writing the generated JWT key {path}: {error}")]
    Write { path: String, error: std::io::Error },
    #[error("signing a token: {0}")]
    Sign(jsonwebtoken::errors::Error),
}

/// The HMAC key: the base64-decoded `jwt_key`.
#[derive(Clone)]
pub struct JwtKey(Vec<u8>);

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKey(..)")
    }
}

impl JwtKey {
    /// The key `jwt_key` names (standard base64, as Python's `b64decode` reads it).
    pub fn from_base64(text: &str) -> Result<JwtKey, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(KeyError::NotBase64)?;
        if bytes.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(JwtKey(bytes))
    }

    /// `configured` when set, else the key kept in the data directory (made on first use).
    pub fn configured_or_generated(
        configured: Option<&str>,
        data_dir: &service::DataDir,
    ) -> Result<JwtKey, KeyError> {
        match configured {
            Some(text) => JwtKey::from_base64(text),
            None => JwtKey::from_base64(&generated_key(data_dir)?),
        }
    }
}

/// The base64 text of the key in `data_dir`, written (0600) when it does not exist yet.
fn generated_key(data_dir: &service::DataDir) -> Result<String, KeyError> {
    let path = data_dir.path().join(KEY_FILE).display().to_string();
    let jobs = data_dir.subdir("jobs").map_err(|error| KeyError::Write {
        path: path.clone(),
        error: std::io::Error::other(error.to_string()),
    })?;
    let name = "jwt.key";
    match jobs.dir().open(name) {
        Ok(mut file) => {
            let mut text = String::new();
            file.read_to_string(&mut text)
                .map_err(|error| KeyError::Read { path, error })?;
            Ok(text)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let text = new_key_text();
            write_private(jobs.dir(), name, &text)
                .map_err(|error| KeyError::Write { path, error })?;
            Ok(text)
        }
        Err(error) => Err(KeyError::Read { path, error }),
    }
}

fn new_key_text() -> String {
    let mut bytes = [0u8; GENERATED_KEY_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Creates `name` with mode 0600 (never replacing one a concurrent start wrote first).
fn write_private(dir: &cap_std::fs::Dir, name: &str, text: &str) -> std::io::Result<()> {
    use cap_std::fs::OpenOptionsExt;
    let mut options = cap_std::fs::OpenOptions::new();
    options.write(true).create_new(true).mode(0o600);
    let mut file = dir.open_with(name, &options)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// What `portico token` puts in a token (checked claims are read as a map, so a token that
/// lacks one gets "has no exp claim", not a parse error).
#[derive(Debug, Serialize)]
struct Claims {
    aud: serde_json::Value,
    exp: u64,
}

/// Checks the `Authorization` header of requests that submit or cancel.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    bypass: bool,
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
        let mut validation = Validation::new(Algorithm::HS512);
        validation.algorithms = vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
        validation.set_audience(&[audience]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "aud"]);
        Verifier {
            key: DecodingKey::from_secret(&key.0),
            validation,
            bypass,
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
        check_algorithm(token)?;
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map(|_| ())
        .map_err(|error| classify(error.kind()))
    }
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

/// A token for `audience` valid for `ttl` from now: what `portico token` prints, shaped as
/// the original's (`{"aud": ..., "exp": ...}`).
pub fn sign(
    key: &JwtKey,
    audience: &str,
    algorithm: Algorithm,
    ttl: Duration,
) -> Result<String, KeyError> {
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
        &EncodingKey::from_secret(&key.0),
    )
    .map_err(KeyError::Sign)
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
            &EncodingKey::from_secret(&key.0),
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
            &EncodingKey::from_secret(&key.0),
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
    fn signed_tokens_verify_and_the_generated_key_is_kept_private() {
        let temp = tempfile::tempdir().unwrap();
        let (data_dir, _) = service::DataDir::open_or_create(temp.path()).unwrap();
        let key = JwtKey::configured_or_generated(None, &data_dir).unwrap();
        let again = JwtKey::configured_or_generated(None, &data_dir).unwrap();
        assert_eq!(key.0, again.0, "the same key on every start");
        assert_eq!(key.0.len(), GENERATED_KEY_BYTES);
        let mode = std::fs::metadata(temp.path().join(KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let token = sign(&key, "aud", Algorithm::HS512, Duration::from_secs(600)).unwrap();
        assert_eq!(
            Verifier::new(&key, "aud", false).check(Some(token.as_bytes())),
            Ok(())
        );
        assert!(matches!(
            JwtKey::from_base64("not base64!"),
            Err(KeyError::NotBase64(_))
        ));
    }
}
