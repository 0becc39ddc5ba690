//! Printable stand-ins for secret configuration values.
//!
//! Invariant: what these produce never contains a password, a query string that may hold one,
//! or any part of a secret key.

use secrecy::{ExposeSecret, SecretString};

pub(super) fn serialize_redacted_url<S: serde::Serializer>(
    url: &SecretString,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url.expose_secret()))
}

pub(super) fn serialize_redacted_list<S: serde::Serializer>(
    secrets: &[SecretString],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(secrets.len()))?;
    for _ in secrets {
        seq.serialize_element("<redacted>")?;
    }
    seq.end()
}

pub(super) fn serialize_redacted<S: serde::Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.is_some() {
        "<redacted>"
    } else {
        "<unset>"
    })
}

/// A database URL safe to print: the password (and any query string, which may hold one) hidden.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("<redacted>"));
            }
            if parsed.query().is_some_and(|q| q.contains("password")) {
                parsed.set_query(Some("<redacted>"));
            }
            parsed.to_string()
        }
        // Unparseable: show only the scheme rather than risk printing a credential.
        Err(_) => match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://<redacted>"),
            None => "<redacted>".to_owned(),
        },
    }
}
