//! Host-name syntax: the one form console hosts and request hosts are compared in.

/// A console host in the form request hosts are compared in: an IP address as `IpAddr` prints
/// it (IPv6 without brackets), a name lower-cased without a trailing dot. `None` when it is
/// neither (a port, user-info or any other character).
pub(super) fn console_host_name(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if let Ok(address) = raw.parse::<std::net::IpAddr>() {
        return Some(address.to_string());
    }
    host_name(raw)
}

/// A host name as hosts are compared: letters, digits, `-` and `.` in non-empty labels, at most
/// 253 characters, lower-cased and without a trailing dot. `None` for anything else. Console
/// hosts and request hosts (`tenancy::parse_host_header`) share this one syntax.
pub fn host_name(raw: &str) -> Option<String> {
    let name = raw.strip_suffix('.').unwrap_or(raw);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.split('.').any(str::is_empty);
    valid.then(|| name.to_ascii_lowercase())
}
