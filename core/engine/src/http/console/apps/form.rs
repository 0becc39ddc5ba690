//! A plugin's form page: its inputs filled from the page's `load` route (or from what was
//! posted, when the plugin refused it), chosen files sent to their input's upload route first,
//! then the whole posted as one JSON body to the page's route.
//!
//! Invariant: the body holds only the declared inputs, each typed as declared and placed at its
//! declared pointer; a file reaches only its image input's declared upload route. Every call
//! goes through the same door, with the visitor's session, as every other page call.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Query, Request as HttpRequest, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Map, Value, json};

use super::super::super::AppState;
use super::super::super::error::ApiError;
use super::super::{Fields, Look, Signed};
use super::{Opened, call, frame, href, page_of, pairs_of, path_of, refusal, text};
use crate::doors::Request;
use crate::plugins::catalog::Installation;
use crate::plugins::manifest::pages::{Input, InputKind, Page, PageKind};
use crate::themes::Locale;

/// Files one post may carry at most, whatever the form declares; the body limit bounds their
/// bytes.
const MAX_FILES: usize = 20;

/// A file chosen for an image input.
struct File {
    /// The image input's field name with `:file` after it.
    field: String,
    content_type: String,
    bytes: Bytes,
}

/// A form field's name: the input's, with the row number in a repeated form.
fn field_name(input: &Input, row: Option<usize>) -> String {
    match row {
        Some(i) => format!("{}.{i}", input.name),
        None => input.name.clone(),
    }
}

/// A value as a form field holds it: text as is, anything else as JSON. Never cut, since a
/// form saves what it shows (the plugin's output limit bounds it).
fn plain(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `load` answer as the fields a browser would post, and how many rows it holds: a fresh
/// form and one shown again after a refusal are drawn the same way.
fn fields_from(page: &Page, answer: &Value) -> (Fields, usize) {
    let mut pairs = Vec::new();
    let mut put = |input: &Input, row: Option<usize>, source: &Value| {
        let Some(value) = input.from.as_deref().and_then(|f| source.pointer(f)) else {
            return;
        };
        let name = field_name(input, row);
        match (input.kind, value) {
            (InputKind::Choices, Value::Array(items)) => {
                pairs.extend(items.iter().map(|item| (name.clone(), plain(item))));
            }
            (InputKind::Boolean, value) => {
                if value.as_bool() == Some(true) {
                    pairs.push((name, "1".to_owned()));
                }
            }
            (_, value) => pairs.push((name, plain(value))),
        }
    };
    let mut count = 0;
    match &page.rows {
        Some(rows) => {
            let current = rows
                .from
                .as_deref()
                .and_then(|f| answer.pointer(f))
                .and_then(Value::as_array);
            for (i, row) in current.into_iter().flatten().take(rows.max).enumerate() {
                for input in &page.inputs {
                    put(input, Some(i), row);
                }
                count = i + 1;
            }
        }
        None => {
            for input in &page.inputs {
                put(input, None, answer);
            }
        }
    }
    (Fields::from_pairs(pairs), count)
}

/// Whether row `i` is empty: no text, number or image in it. Selects, checkboxes and hidden
/// values do not count, since a blank row posts them too. An empty row is left out.
fn row_is_blank(page: &Page, fields: &Fields, i: usize) -> bool {
    page.inputs.iter().all(|input| {
        !matches!(
            input.kind,
            InputKind::Text | InputKind::Textarea | InputKind::Integer | InputKind::Image
        ) || fields.one(&field_name(input, Some(i))).trim().is_empty()
    })
}

/// Rows of a repeated form holding something, counted to the last one that does.
fn rows_posted(page: &Page, fields: &Fields) -> usize {
    let max = page.rows.as_ref().map_or(0, |r| r.max);
    (0..max)
        .rev()
        .find(|i| !row_is_blank(page, fields, *i))
        .map_or(0, |i| i + 1)
}

/// The inputs for the template, with their values from `fields`: a list, or rows of lists.
fn drawn(
    installed: &Installation,
    locale: Locale,
    page: &Page,
    fields: &Fields,
    rows: usize,
) -> Value {
    let input_of = |input: &Input, row: Option<usize>| {
        let name = field_name(input, row);
        let chosen = fields.all(&name);
        let value = fields.one(&name);
        json!({
            "name": name,
            "id": format!("in-{}", name.replace('.', "-")),
            "label": text(installed, locale, &input.label),
            "type": input.kind,
            "required": input.required,
            // A blank row must stay blank: only the server asks for a row's required inputs.
            "required_attr": input.required && row.is_none(),
            "options": input
                .options
                .iter()
                .map(|o| json!({
                    "value": o,
                    "label": option_text(installed, locale, o),
                    "chosen": chosen.contains(o),
                }))
                .collect::<Vec<_>>(),
            "value": value,
            "checked": !value.is_empty(),
        })
    };
    match &page.rows {
        Some(spec) => {
            let shown = (rows + spec.blank).clamp(1, spec.max);
            json!({
                "rows": (0..shown)
                    .map(|i| json!({
                        "number": i + 1,
                        "inputs": page.inputs.iter().map(|input| input_of(input, Some(i))).collect::<Vec<_>>(),
                    }))
                    .collect::<Vec<_>>()
            })
        }
        None => json!({
            "inputs": page.inputs.iter().map(|input| input_of(input, None)).collect::<Vec<_>>()
        }),
    }
}

/// How an option reads: the manifest's `i18n` entry `opt.<value>`, else the value itself.
fn option_text(installed: &Installation, locale: Locale, value: &str) -> String {
    let key = format!("opt.{value}");
    let shown = text(installed, locale, &key);
    if shown == key {
        value.to_owned()
    } else {
        shown
    }
}

/// Sets `value` at `pointer` in `target`, making objects on the way (anything else there is
/// replaced). Every token is an object key: a form never indexes into arrays.
fn put_at(target: &mut Value, pointer: &str, value: Value) {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, path)) = tokens.split_last() else {
        *target = value;
        return;
    };
    let mut here = target;
    for token in path {
        if !here.is_object() {
            *here = Value::Object(Map::new());
        }
        here = match here {
            Value::Object(map) => map
                .entry(token.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            _ => return,
        };
    }
    if !here.is_object() {
        *here = Value::Object(Map::new());
    }
    if let Value::Object(map) = here {
        map.insert(last.clone(), value);
    }
}

/// What is wrong with one input: its label key, its row, and what it needs.
type Wrong<'p> = (&'p Input, Option<usize>, &'static str);

/// Puts each input of the form (or of row `row`) into `target`, typed as declared; an empty
/// optional input is left out.
fn fill<'p>(
    target: &mut Value,
    page: &'p Page,
    fields: &Fields,
    row: Option<usize>,
) -> Result<(), Wrong<'p>> {
    for input in &page.inputs {
        let name = field_name(input, row);
        let raw = fields.one(&name).trim();
        let value = match input.kind {
            InputKind::Boolean => Value::Bool(!raw.is_empty()),
            InputKind::Choices => {
                let chosen = fields.all(&name);
                if input.required && chosen.is_empty() {
                    return Err((input, row, "choose at least one"));
                }
                // In the declared order, each once, only the declared ones.
                Value::Array(
                    input
                        .options
                        .iter()
                        .filter(|o| chosen.contains(o))
                        .map(|o| Value::from(o.as_str()))
                        .collect(),
                )
            }
            _ if raw.is_empty() && !input.required => continue,
            _ if raw.is_empty() => return Err((input, row, "required")),
            InputKind::Integer => raw
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| (input, row, "a whole number"))?,
            InputKind::Select if !input.options.iter().any(|o| o == raw) => {
                return Err((input, row, "not one of the choices"));
            }
            InputKind::Text
            | InputKind::Textarea
            | InputKind::Select
            | InputKind::Hidden
            | InputKind::Image => Value::from(raw),
        };
        put_at(target, &input.at(), value);
    }
    Ok(())
}

/// The JSON body a form sends.
fn body_of<'p>(page: &'p Page, fields: &Fields) -> Result<Value, Wrong<'p>> {
    let mut body = Value::Object(Map::new());
    match &page.rows {
        None => fill(&mut body, page, fields, None)?,
        Some(rows) => {
            let mut items = Vec::new();
            for i in (0..rows.max).filter(|i| !row_is_blank(page, fields, *i)) {
                let mut row = Value::Object(Map::new());
                fill(&mut row, page, fields, Some(i))?;
                items.push(row);
            }
            put_at(&mut body, &rows.at, Value::Array(items));
        }
    }
    Ok(body)
}

/// `GET` of a form page: its inputs, filled from its `load` route when it has one.
pub(super) async fn show(
    (state, look, signed): (&AppState, &Look, &Signed),
    opened: &Opened,
    (installed, page): (&Installation, &Page),
    params: &BTreeMap<String, String>,
    action: String,
    mut data: Value,
) -> Result<Response, ApiError> {
    let plugin = installed.plugin_id.as_str();
    let (mut fields, mut rows) = (Fields::from_pairs(Vec::new()), 0);
    let mut status = StatusCode::OK;
    if let Some(load) = &page.load {
        let request = Request {
            method: "GET".into(),
            path: path_of(load, params)?,
            query: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            locale: look.locale.tag(),
        };
        let (code, answer) = call(signed, opened, plugin, request).await?;
        if code >= 400 {
            // Without the current values the form would save blanks over them: not offered.
            data["problem"] = refusal(code, &answer);
            data["unloaded"] = true.into();
            status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
        } else if let Some(over) = too_many_rows(page, &answer) {
            data["problem"] = over;
            data["unloaded"] = true.into();
            status = StatusCode::CONFLICT;
        } else {
            (fields, rows) = fields_from(page, &answer);
        }
    }
    data["form"] = drawn(installed, look.locale, page, &fields, rows);
    data["multipart"] = multipart(page).into();
    data["action"] = action.into();
    look.render_as(state, "console-app-form", data, status)
}

/// A refusal when the answer holds more rows than the form edits: saving would drop the rest.
fn too_many_rows(page: &Page, answer: &Value) -> Option<Value> {
    let rows = page.rows.as_ref()?;
    let held = rows
        .from
        .as_deref()
        .and_then(|f| answer.pointer(f))
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    (held > rows.max).then(|| {
        json!({
            "status": 409,
            "code": "too_many_rows",
            "message": format!("this form edits at most {} rows and there are {held}; use the API", rows.max),
        })
    })
}

/// Whether the form sends files, so the browser must post it as `multipart/form-data`.
fn multipart(page: &Page) -> bool {
    page.inputs.iter().any(|i| i.kind == InputKind::Image)
}

/// The posted fields and files, from either encoding a browser uses.
async fn posted(
    state: &AppState,
    headers: &HeaderMap,
    request: HttpRequest,
) -> Result<(Fields, Vec<File>), ApiError> {
    let is_multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_multipart {
        let body = axum::body::to_bytes(request.into_body(), usize::MAX)
            .await
            .map_err(|_| ApiError::BadBody)?;
        return Ok((Fields::parse(&body), Vec::new()));
    }
    let unreadable = |e: axum::extract::multipart::MultipartError| ApiError::Validation {
        field: "form",
        message: e.body_text(),
    };
    let mut multipart =
        Multipart::from_request(request, state)
            .await
            .map_err(|e| ApiError::Validation {
                field: "form",
                message: e.body_text(),
            })?;
    let (mut pairs, mut files) = (Vec::new(), Vec::new());
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        let name = field.name().unwrap_or_default().to_owned();
        if field.file_name().is_some() {
            let content_type = field
                .content_type()
                .unwrap_or("application/octet-stream")
                .to_owned();
            let bytes = field.bytes().await.map_err(unreadable)?;
            // A file input left empty still posts a part with no bytes.
            if !bytes.is_empty() && files.len() < MAX_FILES {
                files.push(File {
                    field: name,
                    content_type,
                    bytes,
                });
            }
        } else {
            pairs.push((name, field.text().await.map_err(unreadable)?));
        }
    }
    Ok((Fields::from_pairs(pairs), files))
}

/// Sends each chosen file to its image input's upload route and puts what that answers into
/// the input's field. Answers the first refusal, to show on the form.
async fn send_files(
    (signed, opened): (&Signed, &Opened),
    (installed, page): (&Installation, &Page),
    params: &BTreeMap<String, String>,
    locale: Locale,
    fields: &mut Fields,
    files: Vec<File>,
) -> Result<Option<Value>, ApiError> {
    for file in files {
        let Some(target) = file.field.strip_suffix(":file") else {
            continue;
        };
        let (name, row) = match target.split_once('.') {
            Some((name, row)) => (name, row.parse::<usize>().ok()),
            None => (target, None),
        };
        // The file must name an image input in the form's own shape.
        let fits = match (&page.rows, row) {
            (Some(rows), Some(i)) => i < rows.max,
            (None, None) => !target.contains('.'),
            _ => false,
        };
        let input = page
            .inputs
            .iter()
            .find(|i| i.name == name && i.kind == InputKind::Image);
        let (Some(input), true) = (input, fits) else {
            continue;
        };
        let Some(upload) = &input.upload else {
            continue;
        };
        let (method, _) = upload.route.split_once(' ').unwrap_or_default();
        let request = Request {
            method: method.to_ascii_uppercase(),
            path: path_of(&upload.route, params)?,
            query: upload.query.clone(),
            headers: vec![("content-type".into(), file.content_type)],
            body: file.bytes.to_vec(),
            locale: locale.tag(),
        };
        let (status, answer) = call(signed, opened, &installed.plugin_id, request).await?;
        let label = text(installed, locale, &input.label);
        if status >= 400 {
            let mut problem = refusal(status, &answer);
            problem["message"] = format!("{label}: {}", plain(&problem["message"])).into();
            return Ok(Some(problem));
        }
        let value = answer
            .pointer(&upload.result)
            .map(plain)
            .unwrap_or_default();
        if value.is_empty() {
            return Ok(Some(json!({
                "status": 502,
                "code": "plugin_failed",
                "message": format!("{label}: the upload's answer has no {}", upload.result),
            })));
        }
        fields.set(target, value);
    }
    Ok(None)
}

/// `POST` of a form page: files first, then the body; the next page on success, the form again
/// with the refusal and what was typed otherwise.
pub(super) async fn submit(
    State(state): State<AppState>,
    look: Look,
    signed: Signed,
    headers: HeaderMap,
    Path((plugin, id)): Path<(String, String)>,
    Query(params): Query<BTreeMap<String, String>>,
    request: HttpRequest,
) -> Result<Response, ApiError> {
    let (mut fields, files) = posted(&state, &headers, request).await?;
    signed.check_form(&headers, fields.one("form_token"))?;
    let opened = Opened::of(&signed, &params).await?;
    let (installed, page) = page_of(&signed, &opened, &plugin, &id).await?;
    if page.kind != PageKind::Form {
        return Err(ApiError::MethodNotAllowed(format!(
            "/console/apps/{plugin}/{id}"
        )));
    }
    let pairs = pairs_of(&page, &params, &opened);
    let locale = look.locale;
    let sent = send_files(
        (&signed, &opened),
        (&installed, &page),
        &params,
        locale,
        &mut fields,
        files,
    )
    .await?;
    let outcome = match sent {
        Some(problem) => problem,
        None => match body_of(&page, &fields) {
            Ok(json_body) => {
                let (method, _) = page.route.split_once(' ').unwrap_or_default();
                let request = Request {
                    method: method.to_ascii_uppercase(),
                    path: path_of(&page.route, &params)?,
                    query: String::new(),
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: json_body.to_string().into_bytes(),
                    locale: locale.tag(),
                };
                let (status, answer) = call(&signed, &opened, &plugin, request).await?;
                if status < 400 {
                    let back = page.then.as_deref().unwrap_or(&page.id);
                    return Ok(Redirect::to(&href(&plugin, back, &pairs)).into_response());
                }
                refusal(status, &answer)
            }
            Err((input, row, needs)) => {
                let label = text(&installed, locale, &input.label);
                let at = row.map(|i| format!(" ({})", i + 1)).unwrap_or_default();
                json!({
                    "status": 422,
                    "code": "validation_failed",
                    "message": format!("{label}{at}: {needs}"),
                })
            }
        },
    };
    let mut data = frame(&signed, &look, &installed, &page).await?;
    let rows = rows_posted(&page, &fields);
    data["form"] = drawn(&installed, locale, &page, &fields, rows);
    data["multipart"] = multipart(&page).into();
    data["action"] = href(&plugin, &page.id, &pairs).into();
    let status = outcome["status"].as_u64().unwrap_or(422);
    data["problem"] = outcome;
    let mut response = look.render(&state, "console-app-form", data)?;
    *response.status_mut() = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, kind: InputKind) -> Input {
        Input {
            name: name.into(),
            label: name.into(),
            kind,
            required: false,
            options: Vec::new(),
            at: None,
            from: Some(format!("/{name}")),
            upload: None,
        }
    }

    fn levels_page() -> Page {
        let mut kind = input("kind", InputKind::Select);
        kind.options = vec!["normal".into(), "locked".into()];
        let mut name = input("name", InputKind::Text);
        name.required = true;
        serde_json::from_value(json!({
            "id": "levels-edit", "title": "Levels", "kind": "form", "route": "PUT /levels",
            "load": "GET /levels",
            "rows": { "at": "/levels", "from": "/levels", "max": 5, "blank": 1 },
        }))
        .map(|mut page: Page| {
            page.inputs = vec![
                input("id", InputKind::Hidden),
                name,
                kind,
                input("threshold", InputKind::Integer),
            ];
            page
        })
        .unwrap()
    }

    #[test]
    fn a_value_goes_where_its_pointer_says_making_objects_on_the_way() {
        let mut body = json!({ "form": "not an object" });
        put_at(&mut body, "/form/required", json!(["mobile"]));
        put_at(&mut body, "/show_name", json!("Tea"));
        put_at(&mut body, "/a~1b", json!(1));
        assert_eq!(
            body,
            json!({ "form": { "required": ["mobile"] }, "show_name": "Tea", "a/b": 1 })
        );
    }

    #[test]
    fn loaded_rows_come_back_as_the_same_body_and_blank_rows_are_left_out() {
        let page = levels_page();
        let answer = json!({ "levels": [
            { "id": "gold", "name": "Gold", "kind": "normal", "threshold": 100 },
            { "id": "vip", "name": "VIP", "kind": "locked" },
        ]});
        let (mut fields, rows) = fields_from(&page, &answer);
        assert_eq!(rows, 2);
        // What the browser posts for the blank row: its select's first option.
        fields.set("kind.2", "normal".into());
        let body = body_of(&page, &fields).unwrap();
        assert_eq!(body, answer, "unchanged rows round-trip");
        assert_eq!(rows_posted(&page, &fields), 2);
    }

    #[test]
    fn a_row_missing_a_required_input_or_with_a_bad_number_is_named_by_its_row() {
        let page = levels_page();
        let mut fields = Fields::from_pairs(Vec::new());
        fields.set("threshold.1", "10".into());
        let (input, row, needs) = body_of(&page, &fields).unwrap_err();
        assert_eq!(
            (input.name.as_str(), row, needs),
            ("name", Some(1), "required")
        );
        fields.set("name.1", "Silver".into());
        fields.set("threshold.1", "ten".into());
        let (input, _, needs) = body_of(&page, &fields).unwrap_err();
        assert_eq!(
            (input.name.as_str(), needs),
            ("threshold", "a whole number")
        );
    }

    #[test]
    fn choices_send_only_declared_options_once_in_their_order() {
        let mut columns = input("columns", InputKind::Choices);
        columns.options = vec!["points".into(), "balance".into(), "level".into()];
        columns.at = Some("/design/columns".into());
        let mut page = levels_page();
        page.rows = None;
        page.inputs = vec![columns];
        let fields = Fields::from_pairs(vec![
            ("columns".into(), "level".into()),
            ("columns".into(), "<script>".into()),
            ("columns".into(), "points".into()),
            ("columns".into(), "level".into()),
        ]);
        assert_eq!(
            body_of(&page, &fields).unwrap(),
            json!({ "design": { "columns": ["points", "level"] } })
        );
    }
}
