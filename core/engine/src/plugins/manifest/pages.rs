//! Console pages a plugin contributes (`[[pages]]` in `plugin.toml`), described as data.
//!
//! Invariant: a page names only one of the plugin's own admin routes and says where in that
//! route's JSON answer its values are (JSON pointers); it carries no markup. The console renders
//! every page with its own templates, escaping every value, so no plugin markup or script ever
//! runs in the console's origin.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Audience, Manifest, Route, invalid};
use crate::plugins::Error;

/// At most this many pages, columns per table, fields per detail, inputs per form and options
/// per select: a page's size is bounded whatever the plugin declares.
const MAX_PAGES: usize = 32;
const MAX_COLUMNS: usize = 12;
const MAX_INPUTS: usize = 20;
const MAX_OPTIONS: usize = 50;
const MAX_LINKS: usize = 8;
/// Rows a repeated form shows at most, and blank rows it offers.
const MAX_ROWS: usize = 50;
const MAX_BLANK: usize = 10;

/// Form field names the console's own forms use: an input may not take them (it could read
/// the visitor's form token back).
const RESERVED_INPUTS: [&str; 1] = ["form_token"];

/// A console page: what it shows, from which route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Lower-case letters, digits and dashes; unique in the plugin.
    pub id: String,
    /// Its heading and menu entry: a key of the manifest's `i18n`, else shown as written.
    pub title: String,
    pub kind: PageKind,
    /// The route it reads (`list`, `detail`, `qr`: `GET`) or submits to (`form`), exactly as
    /// declared in `[[routes]]`, such as `GET /members/{id}`. The route's audience is the page's:
    /// only `staff`, `merchant`, `agent` and `partner` routes can have pages. A `{name}` segment
    /// is filled from the page's parameter of that name.
    pub route: String,
    /// Listed in the console's menu; only for a page whose route has no `{name}` segment.
    #[serde(default)]
    pub menu: bool,
    /// `list`: the rows and their columns; `detail`: an optional table below the fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<Table>,
    /// `list`: the query parameter a search box sends (such as `q`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    /// `list`: where the answer holds the cursor of the next page, sent back as `after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// `list`: each row opens this page, with `param` taken from the row's `field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<Open>,
    /// `detail`: label and value pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Column>,
    /// `qr`: where the answer holds the URL to show as a QR code (and as text to copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `form`: the inputs, sent as one JSON object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Input>,
    /// `form`: a `GET` route whose answer fills the inputs with the current values (each
    /// input's `from`), so the form edits what exists; its `{name}` segments must be the page's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<String>,
    /// `form`: the inputs are one row of an array the form edits as a whole (such as levels):
    /// the current rows and some blank ones are shown, and the body carries the rows at `at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Rows>,
    /// `form`: the page shown after a successful submit, with the same parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
    /// Other pages linked from this one with the same parameters (such as a member's
    /// adjustment form from the member's page).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PageKind {
    /// A table of rows, with an optional search box and next-page cursor.
    List,
    /// One record's fields, with an optional table (such as a ledger).
    Detail,
    /// Inputs posted as JSON to the route; the plugin's refusal is shown beside them.
    Form,
    /// A URL as a QR code drawn by the console, and as text to copy.
    Qr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// Where the answer holds the array of rows (a JSON pointer; `""` is the answer itself).
    pub items: String,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Column {
    /// A JSON pointer into the row (or, for `fields`, the answer), such as `/name`.
    pub field: String,
    /// An `i18n` key, else shown as written.
    pub label: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Open {
    pub page: String,
    pub param: String,
    /// A JSON pointer into the row.
    pub field: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rows {
    /// Where the body holds the array of rows (a JSON pointer, not `""`). The inputs' `at` and
    /// `from` point into one row.
    pub at: String,
    /// Where the `load` answer holds the current rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Rows at most (1 to 50), the current ones first.
    pub max: usize,
    /// Blank rows offered after the current ones (0 to 10). A row whose text, number and image
    /// inputs are all empty is left out of the body: that is how a row is removed.
    #[serde(default = "two")]
    pub blank: usize,
}

fn two() -> usize {
    2
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The form field's name (letters, digits, `_` or `-`), and the JSON property it sets
    /// unless `at` says otherwise.
    pub name: String,
    pub label: String,
    #[serde(rename = "type", default)]
    pub kind: InputKind,
    #[serde(default)]
    pub required: bool,
    /// `select` and `choices`: the values offered, each shown as the `i18n` entry
    /// `opt.<value>` where there is one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Where in the body (or the row) the value goes, as a JSON pointer such as
    /// `/form/required`; objects on the way are made. Default: `/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// Where the page's `load` answer (or the row) holds the current value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `image`: where a chosen file goes first; the input then takes a value from its answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<Upload>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    /// A route other than `GET`, as declared in `[[routes]]`, that takes the file as the
    /// request body with the file's content type.
    pub route: String,
    /// Sent as the query string, such as `use=logo`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub query: String,
    /// Where the route's answer holds the value the input takes, such as `/image_id`.
    pub result: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    #[default]
    Text,
    Textarea,
    /// Sent as a JSON integer.
    Integer,
    /// Sent as `true` or `false`.
    Boolean,
    /// One of `options`.
    Select,
    /// Any of `options`, as checkboxes; sent as an array of strings.
    Choices,
    /// Not shown: carries the current value (from `from`) back, such as a row's id.
    Hidden,
    /// A file chosen in the browser, sent to `upload` first; the input's value is what that
    /// answers (such as an image id), else the current value.
    Image,
}

impl Page {
    /// The route this page uses, found among the manifest's routes.
    pub fn route_of<'m>(&self, manifest: &'m Manifest) -> Option<&'m Route> {
        declared(manifest, &self.route)
    }

    /// The `{name}` segments of the page's route: its parameters.
    pub fn params(&self) -> Vec<&str> {
        params_of(&self.route)
    }
}

impl Input {
    /// Where in the body (or row) the value goes.
    pub fn at(&self) -> String {
        self.at.clone().unwrap_or_else(|| format!("/{}", self.name))
    }
}

/// The declared route `"METHOD /path"` names.
fn declared<'m>(manifest: &'m Manifest, route: &str) -> Option<&'m Route> {
    let (method, path) = route.split_once(' ')?;
    manifest
        .routes
        .iter()
        .find(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
}

/// The `{name}` segments of a `"METHOD /path"`.
pub fn params_of(route: &str) -> Vec<&str> {
    route
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn is_page_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_pointer(text: &str) -> bool {
    (text.is_empty() || text.starts_with('/')) && text.len() <= 200
}

fn is_label(text: &str) -> bool {
    !text.trim().is_empty() && text.chars().count() <= 200
}

/// Checks the manifest's pages against its routes: what packing and loading refuse.
pub(super) fn validate(manifest: &Manifest) -> Result<(), Error> {
    let pages = &manifest.pages;
    if pages.len() > MAX_PAGES {
        return Err(invalid(format!("at most {MAX_PAGES} pages")));
    }
    let ids: BTreeSet<&str> = pages.iter().map(|p| p.id.as_str()).collect();
    if ids.len() != pages.len() {
        return Err(invalid("page ids must be unique"));
    }
    for page in pages {
        let at = |what: &str| invalid(format!("page {:?}: {what}", page.id));
        if !is_page_id(&page.id) {
            return Err(at(
                "id must be 1 to 32 lower-case letters, digits or dashes",
            ));
        }
        if !is_label(&page.title) {
            return Err(at("title must be 1 to 200 characters"));
        }
        let Some(route) = page.route_of(manifest) else {
            return Err(at(&format!(
                "route {:?} is not one of the plugin's [[routes]] (\"METHOD /path\")",
                page.route
            )));
        };
        if !matches!(
            route.audience,
            Audience::Staff | Audience::Merchant | Audience::Agent | Audience::Partner
        ) {
            return Err(at(
                "its route must be for staff, merchant, agent or partner",
            ));
        }
        let reads = route.method.eq_ignore_ascii_case("GET");
        match page.kind {
            PageKind::List | PageKind::Detail | PageKind::Qr if !reads => {
                return Err(at("a list, detail or qr page reads a GET route"));
            }
            PageKind::Form if reads => return Err(at("a form submits to a route other than GET")),
            _ => {}
        }
        if page.menu && !page.params().is_empty() {
            return Err(at("a menu page's route has no {name} segment"));
        }
        let columns = page
            .table
            .iter()
            .flat_map(|t| t.columns.iter())
            .chain(&page.fields);
        for column in columns {
            // Not the whole row or answer: a value is one field.
            if column.field.is_empty() || !is_pointer(&column.field) || !is_label(&column.label) {
                return Err(at("each column needs a JSON pointer field and a label"));
            }
        }
        if page.links.len() > MAX_LINKS {
            return Err(at(&format!("at most {MAX_LINKS} links")));
        }
        if let Some(table) = &page.table
            && (!is_pointer(&table.items)
                || table.columns.is_empty()
                || table.columns.len() > MAX_COLUMNS)
        {
            return Err(at(&format!(
                "table needs an items pointer and 1 to {MAX_COLUMNS} columns"
            )));
        }
        if page.fields.len() > MAX_INPUTS * 2 {
            return Err(at("too many fields"));
        }
        let required = match page.kind {
            PageKind::List => page.table.is_some(),
            PageKind::Detail => !page.fields.is_empty() || page.table.is_some(),
            PageKind::Form => page.inputs.len() <= MAX_INPUTS,
            PageKind::Qr => page.value.as_deref().is_some_and(is_pointer),
        };
        if !required {
            return Err(at(match page.kind {
                PageKind::List => "a list needs a table",
                PageKind::Detail => "a detail page needs fields or a table",
                PageKind::Form => "a form has at most 20 inputs",
                PageKind::Qr => "a qr page needs the value pointer",
            }));
        }
        form_parts(manifest, page).map_err(|what| at(&what))?;
        for input in &page.inputs {
            let bad_options = match input.kind {
                InputKind::Select | InputKind::Choices => {
                    input.options.is_empty() || input.options.len() > MAX_OPTIONS
                }
                _ => !input.options.is_empty(),
            };
            let reserved = RESERVED_INPUTS.contains(&input.name.as_str());
            if reserved
                || !is_page_id(&input.name.replace('_', "-"))
                || !is_label(&input.label)
                || bad_options
            {
                return Err(at(&format!(
                    "input {:?} needs a name (letters, digits, _ or -, not form_token), a label, and options only for a select or choices (1 to {MAX_OPTIONS})",
                    input.name
                )));
            }
        }
        if page.search.as_deref().is_some_and(|s| !is_page_id(s))
            || page.next.as_deref().is_some_and(|n| !is_pointer(n))
        {
            return Err(at("search names a query parameter; next is a JSON pointer"));
        }
        let linked = page
            .open
            .iter()
            .map(|o| o.page.as_str())
            .chain(page.then.as_deref())
            .chain(page.links.iter().map(String::as_str));
        for other in linked {
            if !ids.contains(other) {
                return Err(at(&format!("names page {other:?}, which is not declared")));
            }
        }
        if let Some(open) = &page.open
            && (!is_pointer(&open.field) || !is_page_id(&open.param.replace('_', "-")))
        {
            return Err(at("open needs a param name and a JSON pointer field"));
        }
    }
    Ok(())
}

/// Checks what only a form has: its `load` route, its rows, and each input's pointers and
/// upload. Answers what is wrong.
fn form_parts(manifest: &Manifest, page: &Page) -> Result<(), String> {
    let is_form = page.kind == PageKind::Form;
    if !is_form && (page.load.is_some() || page.rows.is_some() || !page.inputs.is_empty()) {
        return Err("only a form has load, rows or inputs".into());
    }
    let own = page.params();
    let fits = |route: &str| params_of(route).iter().all(|p| own.contains(p));
    if let Some(load) = &page.load {
        let reads = declared(manifest, load).is_some_and(|r| r.method.eq_ignore_ascii_case("GET"));
        if !reads || !fits(load) {
            return Err(format!(
                "load {load:?} must be a declared GET route whose {{name}} segments are the page's"
            ));
        }
    }
    if let Some(rows) = &page.rows {
        let from_ok = rows.from.as_deref().is_none_or(is_pointer);
        if rows.at.is_empty() || !is_pointer(&rows.at) || !from_ok {
            return Err("rows need an at pointer (not \"\") and a from pointer".into());
        }
        if rows.max == 0 || rows.max > MAX_ROWS || rows.blank > MAX_BLANK {
            return Err(format!(
                "rows take max 1 to {MAX_ROWS} and blank 0 to {MAX_BLANK}"
            ));
        }
        if rows.from.is_some() && page.load.is_none() {
            return Err("rows.from needs the page's load".into());
        }
    }
    for input in &page.inputs {
        let named = |what: &str| format!("input {:?}: {what}", input.name);
        if input
            .at
            .as_deref()
            .is_some_and(|a| a.is_empty() || !is_pointer(a))
            || input.from.as_deref().is_some_and(|f| !is_pointer(f))
        {
            return Err(named("at and from are JSON pointers (at is not \"\")"));
        }
        if input.from.is_some() && page.load.is_none() {
            return Err(named("from needs the page's load"));
        }
        match (&input.upload, input.kind) {
            (Some(upload), InputKind::Image) => {
                let posts = declared(manifest, &upload.route)
                    .is_some_and(|r| !r.method.eq_ignore_ascii_case("GET"));
                let query_ok =
                    upload.query.len() <= 200 && !upload.query.contains(['#', ' ', '\n']);
                if !posts || !fits(&upload.route) || !query_ok || !is_pointer(&upload.result) {
                    return Err(named(
                        "upload needs a declared route other than GET whose {name} segments are the page's, a short query and a result pointer",
                    ));
                }
            }
            (None, InputKind::Image) => return Err(named("an image input needs its upload")),
            (Some(_), _) => return Err(named("only an image input has an upload")),
            (None, _) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
id = "com.example.pages"
version = "1.0.0"
host_api = "^0.2"
name = "Pages"
publisher = "Example"
[[routes]]
method = "GET"
path = "/items"
audience = "staff"
[[routes]]
method = "GET"
path = "/items/{id}"
audience = "staff"
[[routes]]
method = "POST"
path = "/items/{id}/notes"
audience = "merchant"
[[routes]]
method = "GET"
path = "/card"
audience = "member"
"#;

    /// The manifest with `pages` appended, fully checked as installing checks it.
    fn checked(pages: &str) -> Result<Manifest, String> {
        let manifest =
            Manifest::parse(&format!("{BASE}{pages}"), None).map_err(|e| e.to_string())?;
        Manifest::from_json(&manifest.to_json()).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
[[pages]]
id = "items"
title = "Items"
kind = "list"
route = "GET /items"
menu = true
open = { page = "item", param = "id", field = "/id" }
table = { items = "/items", columns = [{ field = "/name", label = "Name" }] }
[[pages]]
id = "item"
title = "Item"
kind = "detail"
route = "GET /items/{id}"
fields = [{ field = "/name", label = "Name" }]
links = ["note"]
[[pages]]
id = "note"
title = "Note"
kind = "form"
route = "POST /items/{id}/notes"
then = "item"
inputs = [{ name = "text", label = "Text", required = true }, { name = "kind", label = "Kind", type = "select", options = ["a", "b"] }]
"#;

    #[test]
    fn pages_bound_to_declared_admin_routes_are_accepted_with_their_parameters() {
        let manifest = checked(GOOD).unwrap();
        assert_eq!(manifest.pages.len(), 3);
        assert_eq!(manifest.pages[1].params(), ["id"]);
        assert!(manifest.pages[0].params().is_empty());
    }

    /// A repeated form that loads its rows and uploads an image per row.
    const ROWS: &str = r#"
[[routes]]
method = "PUT"
path = "/levels"
audience = "merchant"
[[routes]]
method = "GET"
path = "/levels"
audience = "staff"
[[routes]]
method = "POST"
path = "/images"
audience = "merchant"
[[pages]]
id = "levels"
title = "Levels"
kind = "form"
route = "PUT /levels"
load = "GET /levels"
rows = { at = "/levels", from = "/levels", max = 10 }
inputs = [
    { name = "id", label = "Id", type = "hidden", from = "/id" },
    { name = "name", label = "Name", required = true, from = "/name" },
    { name = "perks", label = "Perks", type = "choices", options = ["a", "b"], at = "/perks/list" },
    { name = "icon", label = "Icon", type = "image", from = "/icon", upload = { route = "POST /images", query = "use=icon", result = "/image_id" } },
]
"#;

    #[test]
    fn a_form_that_loads_its_rows_and_uploads_images_is_accepted() {
        let manifest = checked(ROWS).unwrap();
        let page = &manifest.pages[0];
        assert_eq!(page.rows.as_ref().map(|r| (r.max, r.blank)), Some((10, 2)));
        assert_eq!(page.inputs[2].at(), "/perks/list");
        assert_eq!(page.inputs[1].at(), "/name");
    }

    #[test]
    fn a_form_whose_load_rows_or_uploads_do_not_fit_is_refused() {
        let cases = [
            (ROWS.replace("load = \"GET /levels\"", "load = \"PUT /levels\""), "load"),
            (ROWS.replace("load = \"GET /levels\"\n", ""), "needs the page's load"),
            (ROWS.replace("max = 10", "max = 0"), "max 1 to 50"),
            (ROWS.replace("max = 10", "max = 51"), "max 1 to 50"),
            (ROWS.replace("at = \"/levels\"", "at = \"\""), "at pointer"),
            (ROWS.replace("at = \"/perks/list\"", "at = \"perks\""), "JSON pointers"),
            (
                ROWS.replace(", upload = { route = \"POST /images\", query = \"use=icon\", result = \"/image_id\" }", ""),
                "needs its upload",
            ),
            (ROWS.replace("route = \"POST /images\"", "route = \"GET /levels\""), "upload needs"),
            (ROWS.replace("query = \"use=icon\"", "query = \"a b\""), "upload needs"),
            (
                ROWS.replace(
                    "type = \"hidden\", from = \"/id\"",
                    "type = \"hidden\", from = \"/id\", upload = { route = \"POST /images\", result = \"/x\" }",
                ),
                "only an image input",
            ),
            (
                ROWS.replace("options = [\"a\", \"b\"]", "options = []"),
                "select or choices",
            ),
        ];
        for (pages, expected) in cases {
            let error = checked(&pages).unwrap_err();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }

    #[test]
    fn the_tutorials_pages_are_valid_for_the_routes_it_names() {
        let readme = include_str!("../../../../../host-api/README.md");
        let section = &readme[readme.find("## 10. Pages in the console").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let pages = &section[start..start + section[start..].find("```").unwrap()];
        let manifest = format!(
            "{}{}",
            BASE.replace("/items", "/cards")
                .replace("/cards/{id}/notes", "/cards/{buyer}/stamps")
                .replace("/cards/{id}", "/cards/{buyer}"),
            pages
        );
        let parsed = Manifest::parse(&manifest, None).unwrap();
        let checked = Manifest::from_json(&parsed.to_json()).unwrap();
        assert_eq!(checked.pages.len(), 3);
        assert_eq!(checked.i18n["zh-CN"]["page.cards"], "集点卡");
    }

    #[test]
    fn a_page_that_does_not_fit_its_routes_is_refused_naming_the_page() {
        let cases = [
            (
                GOOD.replace("GET /items\"", "GET /nothing\""),
                "is not one of the plugin's",
            ),
            (
                GOOD.replace("route = \"GET /items/{id}\"", "route = \"GET /card\""),
                "staff, merchant",
            ),
            (
                GOOD.replace("POST /items/{id}/notes", "GET /items/{id}"),
                "submits to a route other than GET",
            ),
            (
                GOOD.replace("then = \"item\"", "then = \"elsewhere\""),
                "not declared",
            ),
            (
                GOOD.replace("id = \"items\"", "id = \"Items!\""),
                "lower-case",
            ),
            (
                GOOD.replace(
                    "fields = [{ field = \"/name\"",
                    "fields = [{ field = \"name\"",
                ),
                "JSON pointer",
            ),
            (
                GOOD.replace("options = [\"a\", \"b\"]", "options = []"),
                "options only for a select",
            ),
            (
                GOOD.replace("name = \"text\"", "name = \"form_token\""),
                "not form_token",
            ),
            (
                GOOD.replace("fields = [{ field = \"/name\"", "fields = [{ field = \"\""),
                "JSON pointer",
            ),
            (
                format!(
                    "{GOOD}\n[[pages]]\nid = \"items\"\ntitle = \"t\"\nkind = \"qr\"\nroute = \"GET /items\"\nvalue = \"/u\"\n"
                ),
                "unique",
            ),
            (
                GOOD.replace(
                    "kind = \"detail\"\nroute = \"GET /items/{id}\"",
                    "kind = \"detail\"\nroute = \"GET /items/{id}\"\nmenu = true",
                ),
                "menu page",
            ),
        ];
        for (pages, expected) in cases {
            let error = checked(&pages).unwrap_err();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }
}
