//! Figment's errors as messages that name the offending key and where it came from.
//!
//! Invariant: a message never echoes the value that was refused, which for a secret key could be
//! the secret itself.

/// Figment's own message names the key path; keep that and drop any echoed value, which for a
/// secret key could be the secret itself.
pub(super) fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = if e.path.is_empty() {
                None
            } else {
                Some(e.path.join("."))
            };
            let what = match &e.kind {
                figment::error::Kind::InvalidType(actual, expected) => {
                    format!("expected {expected}, found {}", actual_kind(actual))
                }
                figment::error::Kind::InvalidValue(actual, expected) => {
                    format!("expected {expected}, found {}", actual_kind(actual))
                }
                figment::error::Kind::UnknownField(field, _) => {
                    let key = match &key {
                        Some(parent) => format!("{parent}.{field}"),
                        None => field.clone(),
                    };
                    return format!("{key}: unknown key");
                }
                figment::error::Kind::UnknownVariant(variant, expected) => {
                    format!(
                        "unknown value {variant:?}, expected one of {}",
                        expected.join(", ")
                    )
                }
                figment::error::Kind::MissingField(field) => {
                    let key = match &key {
                        Some(parent) => format!("{parent}.{field}"),
                        None => field.to_string(),
                    };
                    return format!("{key}: missing");
                }
                figment::error::Kind::Message(message) => message.clone(),
                other => other.to_string(),
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            match key {
                Some(key) => format!("{key}: {what}{source}"),
                None => format!("{what}{source}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn actual_kind(actual: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "nothing",
        Actual::Option => "an option",
        Actual::NewtypeStruct => "a newtype",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        Actual::Enum | Actual::UnitVariant | Actual::NewtypeVariant => "an enum",
        Actual::TupleVariant | Actual::StructVariant => "an enum",
        Actual::Other(_) => "another type",
    }
}
