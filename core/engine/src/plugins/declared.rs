//! Routes a plugin declares in its code (the SDK's `routes!`), so they are written once: the
//! macro leaves a table in the component's `trellis:routes` custom section, and packing merges
//! it into the manifest, where the engine reads routes as it always has.
//!
//! Invariant: a route the code and `plugin.toml` both declare has one audience, or the plugin is
//! refused; the merged manifest passes every manifest rule again; the table is bounded.

use wasmparser::{Parser, Payload};

use super::Error;
use super::manifest::{Audience, Manifest, Route};

/// The custom section the SDK's `routes!` writes.
pub const SECTION: &str = "trellis:routes";

/// Routes one component may declare in code.
const MAX_ROUTES: usize = 256;

fn refused(message: impl Into<String>) -> Error {
    Error::Manifest(message.into())
}

/// The routes a component declares in code, in the order declared: `METHOD PATH AUDIENCE`
/// lines, from every `trellis:routes` section of its modules.
pub fn routes_in(component: &[u8]) -> Result<Vec<Route>, Error> {
    let mut text = String::new();
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(|e| Error::Compile(format!("reading the component: {e}")))?;
        if let Payload::CustomSection(section) = payload
            && section.name() == SECTION
        {
            let part = std::str::from_utf8(section.data())
                .map_err(|_| refused("the component's route table is not UTF-8"))?;
            text.push_str(part);
            // Sections of several modules are joined; a line never runs into the next.
            text.push('\n');
        }
    }
    let mut routes = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut words = line.split_whitespace();
        let (Some(method), Some(path), Some(audience), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(refused(format!(
                "the component's route table has a malformed line {line:?}"
            )));
        };
        let audience: Audience = serde_json::from_value(serde_json::json!(audience))
            .map_err(|_| {
                refused(format!(
                    "route {method} {path} in the code: {audience} is not an audience (member, staff, merchant, agent, partner, plugin)"
                ))
            })?;
        routes.push(Route {
            method: method.to_owned(),
            path: path.to_owned(),
            audience,
            callback: None,
            identify: None,
        });
        if routes.len() > MAX_ROUTES {
            return Err(refused(format!(
                "the code declares more than {MAX_ROUTES} routes"
            )));
        }
    }
    Ok(routes)
}

/// The manifest with the routes its component declares in code added: a route both declare
/// keeps the manifest's entry (and its `callback` and `identify`), and must have the same
/// audience.
pub fn merged(mut manifest: Manifest, component: &[u8]) -> Result<Manifest, Error> {
    let declared = routes_in(component)?;
    for route in declared {
        match manifest
            .routes
            .iter()
            .find(|r| r.method == route.method && r.path == route.path)
        {
            Some(listed) if listed.audience != route.audience => {
                return Err(refused(format!(
                    "route {} {} is for {:?} in plugin.toml but for {:?} in the code",
                    route.method, route.path, listed.audience, route.audience
                )));
            }
            Some(_) => {}
            None => manifest.routes.push(route),
        }
    }
    manifest.validate()?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module holding `sections` as `trellis:routes` custom sections.
    fn module(sections: &[&str]) -> Vec<u8> {
        let mut bytes = b"\0asm\x01\0\0\0".to_vec();
        for text in sections {
            let mut body = vec![u8::try_from(SECTION.len()).unwrap()];
            body.extend_from_slice(SECTION.as_bytes());
            body.extend_from_slice(text.as_bytes());
            bytes.push(0);
            bytes.push(u8::try_from(body.len()).unwrap());
            bytes.extend(body);
        }
        bytes
    }

    fn manifest(routes: &str) -> Manifest {
        Manifest::parse(
            &format!(
                "id = \"com.example.a\"\nversion = \"1.0.0\"\nhost_api = \"^0.1\"\nname = \"A\"\npublisher = \"E\"\n{routes}"
            ),
            None,
        )
        .unwrap()
    }

    #[test]
    fn routes_declared_in_code_join_the_manifest_with_one_audience_each() {
        let component = module(&[
            "GET / member\nGET /stats staff\n",
            "POST /cards/{id} merchant\n",
        ]);
        let listed = "[[routes]]\nmethod = \"GET\"\npath = \"/\"\naudience = \"member\"\ncallback = \"alipay.card-activation\"\n";
        let both = merged(manifest(listed), &component).unwrap();
        let shown: Vec<String> = both
            .routes
            .iter()
            .map(|r| format!("{} {} {:?} {:?}", r.method, r.path, r.audience, r.callback))
            .collect();
        assert_eq!(
            shown,
            [
                "GET / Member Some(\"alipay.card-activation\")",
                "GET /stats Staff None",
                "POST /cards/{id} Merchant None",
            ]
        );
        let other = "[[routes]]\nmethod = \"GET\"\npath = \"/stats\"\naudience = \"member\"\n";
        let err = merged_err(manifest(other), &component);
        assert!(err.contains("GET /stats"), "{err}");
        for (bad, needle) in [
            ("GET /\n", "malformed"),
            ("GET / everyone\n", "not an audience"),
            ("TRACE / member\n", "route method"),
            ("GET cards member\n", "route path"),
        ] {
            let err = merged_err(manifest(""), &module(&[bad]));
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
        // No table: the manifest as it was.
        assert_eq!(merged(manifest(""), &module(&[])).unwrap().routes, []);
    }

    fn merged_err(manifest: Manifest, component: &[u8]) -> String {
        merged(manifest, component).unwrap_err().to_string()
    }
}
