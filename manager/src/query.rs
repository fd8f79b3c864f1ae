//! Strict parsing of the key API's query string.
//!
//! `+` is a space and `%XX` a byte, as in HTML forms and axum's `Query`;
//! unlike a lossy decoder, invalid percent-encoding or a key that is not
//! UTF-8 is an error, never silently replaced.

use bytes::Bytes;

/// The parameters of a key request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyQuery {
    pub key: Option<String>,
    /// Raw bytes: a value need not be UTF-8.
    pub value: Option<Bytes>,
    /// TTL in seconds, as given.
    pub ttl: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("invalid percent-encoding in {0:?}")]
    BadEscape(String),
    #[error("parameter {0:?} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("parameter {0:?} is given more than once")]
    Repeated(&'static str),
}

/// Decodes one `application/x-www-form-urlencoded` component.
pub fn decode(raw: &str) -> Result<Vec<u8>, QueryError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| QueryError::BadEscape(raw.chars().take(64).collect()))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

fn set_once<T>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<(), QueryError> {
    if slot.is_some() {
        return Err(QueryError::Repeated(name));
    }
    *slot = Some(v);
    Ok(())
}

fn utf8(name: &'static str, v: Vec<u8>) -> Result<String, QueryError> {
    String::from_utf8(v).map_err(|_| QueryError::NotUtf8(name))
}

/// Parses the query string (without the `?`). Unknown parameters are
/// ignored, as web servers do.
pub fn parse(query: &str) -> Result<KeyQuery, QueryError> {
    let mut q = KeyQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(name)?.as_slice() {
            b"key" => set_once(&mut q.key, "key", utf8("key", decode(raw)?)?)?,
            b"value" => set_once(&mut q.value, "value", Bytes::from(decode(raw)?))?,
            b"ttl" => set_once(&mut q.ttl, "ttl", utf8("ttl", decode(raw)?)?)?,
            _ => {}
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_encoded_keys() {
        assert_eq!(
            parse("key=12345678").unwrap().key.as_deref(),
            Some("12345678")
        );
        assert_eq!(parse("key=a%20b").unwrap().key.as_deref(), Some("a b"));
        assert_eq!(parse("key=a+b").unwrap().key.as_deref(), Some("a b"));
        assert_eq!(parse("key=%E2%82%AC").unwrap().key.as_deref(), Some("€"));
        assert_eq!(
            parse("key=a%2Bb%26c%3Dd").unwrap().key.as_deref(),
            Some("a+b&c=d")
        );
    }

    #[test]
    fn value_and_ttl() {
        let q = parse("key=k&value=hello%00world&ttl=30").unwrap();
        assert_eq!(q.value.as_deref(), Some(&b"hello\0world"[..]));
        assert_eq!(q.ttl.as_deref(), Some("30"));
        // Values may be any bytes.
        assert_eq!(
            parse("key=k&value=%FF").unwrap().value.as_deref(),
            Some(&[0xFF][..])
        );
    }

    #[test]
    fn missing_and_empty() {
        assert_eq!(parse("").unwrap(), KeyQuery::default());
        assert_eq!(parse("key").unwrap().key.as_deref(), Some(""));
        assert_eq!(parse("key=").unwrap().key.as_deref(), Some(""));
        assert_eq!(parse("other=1&&").unwrap().key, None);
    }

    #[test]
    fn errors() {
        assert!(matches!(parse("key=%zz"), Err(QueryError::BadEscape(_))));
        assert!(matches!(parse("key=%4"), Err(QueryError::BadEscape(_))));
        assert!(matches!(parse("key=%"), Err(QueryError::BadEscape(_))));
        assert_eq!(parse("key=%FF"), Err(QueryError::NotUtf8("key")));
        assert_eq!(parse("key=a&key=b"), Err(QueryError::Repeated("key")));
    }

    #[test]
    fn decoding_never_panics_on_odd_input() {
        for s in [
            "%",
            "%%",
            "%%%",
            "%€",
            "€%2",
            "%2€",
            "+%+",
            "=&=&",
            "key=%e2%82",
        ] {
            let _ = parse(s);
        }
    }

    mod fuzz {
        //! Property tests: the parser never panics, and any key survives a
        //! round trip through percent-encoding.
        use super::super::*;
        use proptest::prelude::*;

        fn encode(s: &str) -> String {
            s.bytes().map(|b| format!("%{b:02X}")).collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn never_panics(q in ".{0,200}") {
                let _ = parse(&q);
            }

            #[test]
            fn never_panics_on_query_like_input(q in "[a-z=&%+0-9A-F\\x80-\\xff]{0,100}") {
                let _ = parse(&q);
            }

            #[test]
            fn any_key_round_trips(key in "\\PC{1,60}", value in proptest::collection::vec(any::<u8>(), 0..100)) {
                let value_enc: String = value.iter().map(|b| format!("%{b:02X}")).collect();
                let q = parse(&format!("key={}&value={value_enc}&ttl=5", encode(&key))).unwrap();
                prop_assert_eq!(q.key.as_deref(), Some(key.as_str()));
                prop_assert_eq!(q.value.as_deref(), Some(value.as_slice()));
                prop_assert_eq!(q.ttl.as_deref(), Some("5"));
            }
        }
    }
}
