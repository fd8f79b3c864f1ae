//! Conditional request headers (RFC 9110, section 13) as ringcache takes
//! them, and its entity tags (docs/design/conditional.md).
//!
//! An entity tag is the key's version as 16 hex digits in double quotes,
//! strong and opaque to clients. Accepted:
//!
//! - `GET`: `If-None-Match: "<etag>"` (304 when the key still holds it);
//! - `POST`: `If-Match: "<etag>"` or `If-Match: *`, or `If-None-Match: *`;
//! - `DELETE`: `If-Match: "<etag>"` or `If-Match: *`.
//!
//! One tag per header, one header per request; anything else is a 400 with
//! one line saying why. A well-formed tag this server did not make (not 16
//! hex digits) matches nothing, as RFC 9110 says of any tag that differs.

use axum::http::{header, HeaderMap, HeaderValue};

use crate::client::Condition;

/// The entity tag of `version`.
pub fn etag(version: u64) -> HeaderValue {
    // Only hex digits and quotes: always a valid header value.
    HeaderValue::from_str(&format!("\"{version:016x}\""))
        .unwrap_or(HeaderValue::from_static("\"\""))
}

/// Why a conditional header was refused (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCondition(String);

/// One header's value: `*` or one strong tag (the version it names; 0 for
/// a tag this server did not make: it matches no version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Any,
    Version(u64),
}

fn bad(msg: impl Into<String>) -> BadCondition {
    BadCondition(msg.into())
}

/// The single value of header `name`, if present.
fn single<'a>(
    headers: &'a HeaderMap,
    name: &header::HeaderName,
) -> Result<Option<&'a str>, BadCondition> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(bad(format!(
            "{name}: one entity tag only (the header appears more than once)"
        )));
    }
    first
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| bad(format!("{name}: not a valid entity tag (non-ASCII bytes)")))
}

fn parse(name: &header::HeaderName, value: &str) -> Result<Tag, BadCondition> {
    if value == "*" {
        return Ok(Tag::Any);
    }
    if value.starts_with("W/") {
        return Err(bad(format!(
            "{name}: weak entity tags are not accepted here: use the strong tag from ETag"
        )));
    }
    if value.contains(',') {
        return Err(bad(format!("{name}: one entity tag only, not a list")));
    }
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|v| !v.contains('"'))
        .ok_or_else(|| {
            bad(format!(
                "{name}: an entity tag is * or a quoted string, e.g. \"0123456789abcdef\""
            ))
        })?;
    // etagc: visible ASCII except the quote, or obs-text (refused above).
    if !inner.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(bad(format!("{name}: invalid character in the entity tag")));
    }
    let ours = inner.len() == 16 && inner.bytes().all(|b| b.is_ascii_hexdigit());
    Ok(Tag::Version(if ours {
        u64::from_str_radix(inner, 16).unwrap_or(0)
    } else {
        0
    }))
}

/// A GET's condition: the version of `If-None-Match: "<etag>"`, if given.
pub fn for_read(headers: &HeaderMap) -> Result<Option<u64>, BadCondition> {
    if headers.contains_key(header::IF_MATCH) {
        return Err(bad("If-Match is not supported on GET (use If-None-Match)"));
    }
    match single(headers, &header::IF_NONE_MATCH)? {
        None => Ok(None),
        Some(v) => match parse(&header::IF_NONE_MATCH, v)? {
            Tag::Any => Err(bad(
                "If-None-Match: * is not supported on GET: give the entity tag you hold",
            )),
            Tag::Version(version) => Ok(Some(version)),
        },
    }
}

/// A write's condition. `create`: the method may create the key (POST),
/// which `If-None-Match: *` asks for; a DELETE may not.
pub fn for_write(headers: &HeaderMap, create: bool) -> Result<Option<Condition>, BadCondition> {
    let if_match = single(headers, &header::IF_MATCH)?;
    let if_none = single(headers, &header::IF_NONE_MATCH)?;
    match (if_match, if_none) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(bad("If-Match and If-None-Match together are not supported: give one")),
        (Some(v), None) => Ok(Some(match parse(&header::IF_MATCH, v)? {
            Tag::Any => Condition::Exists,
            Tag::Version(version) => Condition::Version(version),
        })),
        (None, Some(v)) => match parse(&header::IF_NONE_MATCH, v)? {
            Tag::Any if create => Ok(Some(Condition::Absent)),
            Tag::Any => Err(bad("If-None-Match is not supported on DELETE (use If-Match)")),
            Tag::Version(_) => Err(bad("If-None-Match on a write takes * only (create if absent); use If-Match with an entity tag")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn an_etag_is_the_version_in_16_hex_digits_and_reads_back() {
        assert_eq!(etag(0x1f), "\"000000000000001f\"");
        let h = headers(&[("if-match", "\"000000000000001f\"")]);
        assert_eq!(for_write(&h, true), Ok(Some(Condition::Version(0x1f))));
        let h = headers(&[("if-none-match", etag(u64::MAX).to_str().unwrap())]);
        assert_eq!(for_read(&h), Ok(Some(u64::MAX)));
    }

    #[test]
    fn writes_take_if_match_tag_or_star_and_if_none_match_star() {
        assert_eq!(for_write(&HeaderMap::new(), true), Ok(None));
        let h = headers(&[("if-match", "*")]);
        assert_eq!(for_write(&h, false), Ok(Some(Condition::Exists)));
        let h = headers(&[("if-none-match", "*")]);
        assert_eq!(for_write(&h, true), Ok(Some(Condition::Absent)));
        // Spaces around the value are not part of it.
        let h = headers(&[("if-match", "  \"00000000000000aa\" ")]);
        assert_eq!(for_write(&h, true), Ok(Some(Condition::Version(0xaa))));
    }

    #[test]
    fn a_well_formed_tag_of_another_server_matches_nothing() {
        let h = headers(&[("if-match", "\"xyzzy\"")]);
        assert_eq!(for_write(&h, true), Ok(Some(Condition::Version(0))));
        let h = headers(&[("if-none-match", "\"\"")]);
        assert_eq!(for_read(&h), Ok(Some(0)));
    }

    #[test]
    fn malformed_weak_listed_or_misplaced_conditions_are_refused() {
        let refused = [
            (&[("if-match", "0000000000000001")][..], true),
            (&[("if-match", "\"0000000000000001")], true),
            (&[("if-match", "W/\"0000000000000001\"")], true),
            (
                &[("if-match", "\"0000000000000001\", \"0000000000000002\"")],
                true,
            ),
            (&[("if-match", "\"a\""), ("if-match", "\"b\"")], true),
            (&[("if-match", "\"a\"\"b\"")], true),
            (&[("if-match", "*"), ("if-none-match", "*")], true),
            (&[("if-none-match", "\"0000000000000001\"")], true),
            (&[("if-none-match", "*")], false),
        ];
        for (pairs, create) in refused {
            let h = headers(pairs);
            let e = for_write(&h, create).expect_err(&format!("{pairs:?} refused"));
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
        for pairs in [
            &[("if-match", "\"0000000000000001\"")][..],
            &[("if-none-match", "*")],
            &[("if-none-match", "W/\"0000000000000001\"")],
        ] {
            assert!(
                for_read(&headers(pairs)).is_err(),
                "{pairs:?} refused on GET"
            );
        }
    }
}
