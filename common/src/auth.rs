//! Shared-secret authentication: `authorization: Bearer <token>` on every
//! gRPC call (and, in the manager, every HTTP request). Tokens are compared
//! in constant time and never logged.

use tonic::{Request, Status};

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an `authorization` header value carries `token`. The scheme is
/// case-insensitive (`Bearer`, `bearer`, `BEARER`), as HTTP auth schemes are
/// (RFC 9110 11.1), and spaces may separate it from the token; the token
/// itself is compared exactly.
pub fn bearer_matches(header: Option<&[u8]>, token: &str) -> bool {
    const SCHEME: &[u8] = b"bearer";
    let Some(h) = header else { return false };
    if h.len() <= SCHEME.len() || !h[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return false;
    }
    let rest = &h[SCHEME.len()..];
    // At least one space after the scheme ("Bearers3cret" is not a bearer).
    let given = rest.trim_ascii_start();
    given.len() < rest.len() && constant_time_eq(given, token.as_bytes())
}

/// The `authorization` header value for `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A tonic interceptor that adds `authorization: Bearer <token>` to every
/// call when a token is set (for clients: the manager, and a node pulling
/// from a peer).
#[derive(Clone)]
pub struct AddToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

/// The token cannot travel in gRPC metadata.
#[derive(Debug, thiserror::Error)]
#[error("the auth token must be printable ASCII")]
pub struct BadToken;

impl AddToken {
    pub fn new(token: Option<&str>) -> Result<Self, BadToken> {
        token
            .map(|t| bearer(t).parse().map_err(|_| BadToken))
            .transpose()
            .map(Self)
    }
}

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A tonic interceptor that refuses calls without the token.
#[derive(Clone)]
pub struct RequireToken {
    token: Option<String>,
}

impl RequireToken {
    /// `None` lets every call through.
    pub fn new(token: Option<String>) -> Self {
        Self { token }
    }
}

impl tonic::service::Interceptor for RequireToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        if bearer_matches(header, token) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert!(bearer_matches(Some(b"Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cret2"), "s3cret"));
        assert!(!bearer_matches(Some(b"Bearer s3cre"), "s3cret"));
        // The scheme is case-insensitive; the token is not.
        assert!(bearer_matches(Some(b"bearer s3cret"), "s3cret"));
        assert!(bearer_matches(Some(b"BEARER s3cret"), "s3cret"));
        assert!(bearer_matches(Some(b"Bearer  s3cret"), "s3cret"));
        assert!(!bearer_matches(Some(b"Bearer S3CRET"), "s3cret"));
        assert!(!bearer_matches(Some(b"Bearers3cret"), "s3cret"));
        assert!(!bearer_matches(Some(b"Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(Some(b"s3cret"), "s3cret"));
        assert!(!bearer_matches(None, "s3cret"));
        assert_eq!(bearer("t"), "Bearer t");
    }
}
