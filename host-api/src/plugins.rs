use super::{Response, Result, from_json, to_json};
use crate::host::plugins as raw;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::bindings::trellis::plugin0_2_0::plugins::Request;

/// Calls `plugin`'s route with `request` and returns its answer, whatever its status.
pub fn call(plugin: &str, request: &Request) -> Result<Response> {
    raw::call(plugin, request)
}

/// `GET path` on `plugin`; a 2xx JSON answer decoded as `T`, any other status as
/// [`Error::NotFound`](crate::Error::NotFound) for 404 and [`Error::Internal`](crate::Error::Internal) else.
pub fn get_json<T: DeserializeOwned>(plugin: &str, path: &str) -> Result<T> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    json_answer(
        plugin,
        raw::call(
            plugin,
            &Request {
                method: "GET".into(),
                path: path.into(),
                query: query.into(),
                headers: Vec::new(),
                body: Vec::new(),
            },
        )?,
    )
}

/// `POST path` on `plugin` with a JSON body; the answer as for [`get_json`].
pub fn post_json<T: DeserializeOwned, B: Serialize + ?Sized>(
    plugin: &str,
    path: &str,
    body: &B,
) -> Result<T> {
    json_answer(
        plugin,
        raw::call(
            plugin,
            &Request {
                method: "POST".into(),
                path: path.into(),
                query: String::new(),
                headers: vec![crate::Header {
                    name: "content-type".into(),
                    value: "application/json".into(),
                }],
                body: to_json(body)?.into_bytes(),
            },
        )?,
    )
}

fn json_answer<T: DeserializeOwned>(plugin: &str, response: Response) -> Result<T> {
    let body = String::from_utf8_lossy(&response.body);
    match response.status {
        200..=299 => from_json(&body, plugin),
        404 => Err(crate::Error::NotFound(format!("{plugin}: {body}"))),
        status => Err(crate::Error::Internal(format!(
            "{plugin} answered {status}: {body}"
        ))),
    }
}
