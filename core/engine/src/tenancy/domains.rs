//! Partners' domains: how a host name is normalised and claimed, and which partner (if any) a
//! request's `Host` selects.
//!
//! Invariant: a stored domain is a lower-case ASCII (IDNA) host name — never an IP literal, a
//! port, user-info, a wildcard or a console host — and belongs to one partner only.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
};

use super::{Error, NodeStatus, invalid};
use crate::db::entity::partner_domains;

/// A host name as partners register it: IDNA (punycode) and lower case, no trailing dot. IP
/// literals, ports, user-info and wildcards are refused: a partner's domain is a name only.
pub fn normalize_domain(raw: &str) -> Result<String, Error> {
    let trimmed = raw.trim().trim_end_matches('.');
    let refuse = |why: &str| {
        Err(invalid(
            "domains",
            format!("{:?} is not allowed: {why}", raw.trim()),
        ))
    };
    if trimmed.contains('@') {
        return refuse("user-info is not part of a domain");
    }
    if trimmed.contains('*') {
        return refuse("wildcards are not allowed");
    }
    if trimmed.starts_with('[') || trimmed.parse::<std::net::IpAddr>().is_ok() {
        return refuse("IP addresses are not allowed");
    }
    if trimmed.contains(':') {
        return refuse("a domain has no port");
    }
    // The WHATWG host parser applies IDNA and also recognises the odd IPv4 spellings
    // (`127.1`, `0x7f.0.0.1`) that browsers and resolvers accept.
    let domain = match url::Host::parse(trimmed) {
        Ok(url::Host::Domain(domain)) => domain,
        Ok(url::Host::Ipv4(_) | url::Host::Ipv6(_)) => {
            return refuse("IP addresses are not allowed");
        }
        Err(_) => String::new(),
    };
    let labels_ok = domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if domain.is_empty() || domain.len() > 253 || !labels_ok {
        return Err(invalid(
            "domains",
            format!("{:?} is not a valid host name", raw.trim()),
        ));
    }
    Ok(domain)
}

/// A `Host` header value, parsed strictly: a host name of letters, digits, `-` and `.`, an IPv4
/// address or a bracketed IPv6 address, then an optional numeric port. Anything else (user-info,
/// stray brackets, spaces) is `None`. The name comes back lower-cased, without a trailing dot,
/// and an IPv6 address without its brackets.
pub fn parse_host_header(header: &str) -> Option<(String, Option<u16>)> {
    let port_of = |text: &str| -> Option<Option<u16>> {
        match text {
            "" => Some(None),
            _ => {
                let digits = text.strip_prefix(':')?;
                if digits.is_empty()
                    || digits.len() > 5
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                digits.parse::<u16>().ok().map(Some)
            }
        }
    };
    if let Some(rest) = header.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let address: std::net::Ipv6Addr = inner.parse().ok()?;
        return Some((address.to_string(), port_of(after)?));
    }
    let (name, port) = match header.split_once(':') {
        Some((name, port)) => (name, port_of(&format!(":{port}"))?),
        None => (header, None),
    };
    crate::config::host_name(name).map(|name| (name, port))
}

pub(super) async fn domains_of(
    db: &impl ConnectionTrait,
    partner_id: &str,
) -> Result<Vec<String>, Error> {
    Ok(partner_domains::Entity::find()
        .filter(partner_domains::Column::PartnerId.eq(partner_id))
        .order_by_asc(partner_domains::Column::Domain)
        .all(db)
        .await?
        .into_iter()
        .map(|d| d.domain)
        .collect())
}

/// The partner's first domain in name order, if it has any: where its member pages and
/// Alipay callbacks are addressed when a request came through another host.
pub async fn first_domain(
    db: &impl ConnectionTrait,
    partner_id: &str,
) -> Result<Option<String>, Error> {
    Ok(domains_of(db, partner_id).await?.into_iter().next())
}

/// The partner a request's host belongs to, with its theme and the stored domain it matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPartner {
    pub partner_id: String,
    pub theme: Option<String>,
    pub suspended: bool,
    /// The partner's domain as stored: origins are built from it, never from the raw header.
    pub domain: String,
}

/// The partner that claims `host`, a name in [`parse_host_header`] form. One read: every
/// request on a partner's domain (Alipay's notifications among them) needs it, and the HTTP
/// layer keeps the answer for `database.recent_reads_ms`.
pub async fn partner_for_host(
    db: &impl ConnectionTrait,
    host: &str,
) -> Result<Option<HostPartner>, Error> {
    #[derive(sea_orm::FromQueryResult)]
    struct Row {
        partner_id: String,
        theme: Option<String>,
        status: String,
        domain: String,
    }
    let row: Option<Row> = crate::db::sql::query(
        "SELECT n.id AS partner_id, n.theme, n.status, d.domain FROM partner_domains d \
         JOIN nodes n ON n.id = d.partner_id WHERE d.domain = ?",
        [host.into()],
    )
    .one(db)
    .await?;
    Ok(row.map(|row| HostPartner {
        partner_id: row.partner_id,
        theme: row.theme,
        suspended: row.status == NodeStatus::Suspended.as_str(),
        domain: row.domain,
    }))
}

/// Normalises a partner's domains and refuses any that names a console host (`reserved`, as
/// `config` normalises `http.console_hosts`).
pub(super) fn normalize_domains(
    domains: &[String],
    reserved: &[String],
) -> Result<Vec<String>, Error> {
    if domains.len() > 20 {
        return Err(invalid("domains", "at most 20 domains per partner"));
    }
    let mut out: Vec<String> = domains
        .iter()
        .map(|d| normalize_domain(d))
        .collect::<Result<_, _>>()?;
    if let Some(taken) = out.iter().find(|d| reserved.contains(d)) {
        return Err(invalid(
            "domains",
            format!("{taken} serves the platform console and cannot be a partner's domain"),
        ));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub(super) async fn replace_domains(
    db: &impl ConnectionTrait,
    partner_id: &str,
    domains: &[String],
) -> Result<(), Error> {
    for domain in domains {
        if let Some(existing) = partner_domains::Entity::find_by_id(domain.as_str())
            .one(db)
            .await?
            && existing.partner_id != partner_id
        {
            return Err(Error::DomainTaken(domain.clone()));
        }
    }
    partner_domains::Entity::delete_many()
        .filter(partner_domains::Column::PartnerId.eq(partner_id))
        .exec(db)
        .await?;
    let now = Utc::now();
    for domain in domains {
        let inserted = partner_domains::ActiveModel {
            domain: Set(domain.clone()),
            partner_id: Set(partner_id.to_owned()),
            created_at: Set(now),
        }
        .insert(db)
        .await;
        match inserted {
            Ok(_) => {}
            // Another partner claimed it between our check and this insert.
            Err(e)
                if matches!(
                    e.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ) =>
            {
                return Err(Error::DomainTaken(domain.clone()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_headers_are_parsed_strictly() {
        let parsed = |h: &str| parse_host_header(h);
        assert_eq!(
            parsed("Shop.Example.COM:8080"),
            Some(("shop.example.com".to_owned(), Some(8080)))
        );
        assert_eq!(parsed("localhost"), Some(("localhost".to_owned(), None)));
        assert_eq!(parsed("[::1]:8080"), Some(("::1".to_owned(), Some(8080))));
        assert_eq!(
            parsed("example.com."),
            Some(("example.com".to_owned(), None))
        );
        assert_eq!(
            parsed("127.0.0.1:80"),
            Some(("127.0.0.1".to_owned(), Some(80)))
        );
        for bad in [
            "[localhost]@evil.example",
            "localhost@evil.example",
            "user@p1.test",
            "[::1]evil",
            "[::1]:80:80",
            "p1.test:",
            "p1.test:99999",
            "p1.test:80x",
            "p1 .test",
            "",
            "a..b",
            "*.p1.test",
        ] {
            assert_eq!(parsed(bad), None, "{bad}");
        }
    }

    #[test]
    fn domains_are_validated() {
        assert_eq!(
            normalize_domain(" Pay.Example.com ").unwrap(),
            "pay.example.com"
        );
        assert_eq!(normalize_domain("localhost").unwrap(), "localhost");
        // Internationalised names are stored as the ASCII form resolvers and Host headers use.
        assert_eq!(normalize_domain("例子.com").unwrap(), "xn--fsqu00a.com");
        assert_eq!(normalize_domain("BÜCHER.de").unwrap(), "xn--bcher-kva.de");
        for bad in [
            "",
            "exa mple.com",
            "-a.com",
            "a..com",
            "a/b.com",
            "127.0.0.1",
            "127.1",
            "0x7f.0.0.1",
            "::1",
            "[::1]",
            "pay.example.com:8443",
            "user@pay.example.com",
            "*.example.com",
        ] {
            assert!(normalize_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn console_hosts_cannot_be_claimed() {
        let reserved = ["127.0.0.1".to_owned(), "admin.example.com".to_owned()];
        let claim = |d: &str| normalize_domains(&[d.to_owned()], &reserved);
        assert!(claim("Admin.Example.COM.").is_err());
        assert!(claim("pay.example.com").is_ok());
    }
}
