//! The OpenAPI 3.1 document of the admin API, generated from the same route table and types the
//! handlers use, served at `/api/openapi.json`.
//!
//! Invariant: every operation listed here is routed (a test calls each one), and every schema
//! is derived from the Rust type the handler reads or writes.

use utoipa::OpenApi;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, PathsBuilder, Ref, Required, ResponsesBuilder};

use super::accounts::{CreateKeyRequest, CreateUserRequest, CreatedKey};
use super::catalog::{ActivateRequest, OfferRequest};
use super::configs::PluginConfig;
use super::error::ErrorBody;
use super::events::{PublishEventRequest, Published};
use super::nodes::{CreateNodeRequest, NODE_ROUTES};
use super::packages::{AssignRequest, CreatePackageRequest, PackageDetail, RenewRequest};
use super::session::{LoginRequest, LoginResponse, Me, PasswordChange};
use crate::alipay::SignType;
use crate::alipay::credentials::{CredentialsInput, CredentialsView, GatewayKind, KeyMode};
use crate::auth::{ApiKey, User, UserPatch};
use crate::events::{Delivery, Recorded};
use crate::packages::{Assignment, Entitlement, Package, PackageVersion, Price, Quotas, Spec};
use crate::plugins::catalog::{Installation, Policy, RouteView, VersionView};
use crate::rbac::audit::{Outcome, Record};
use crate::tenancy::{NewNode, Node, NodeKind, NodePatch, NodeStatus, Role};

#[derive(OpenApi)]
#[openapi(components(schemas(
    ErrorBody,
    Node,
    NodeKind,
    NodeStatus,
    NewNode,
    NodePatch,
    CreateNodeRequest,
    Role,
    User,
    UserPatch,
    CreateUserRequest,
    ApiKey,
    CreateKeyRequest,
    CreatedKey,
    LoginRequest,
    LoginResponse,
    PasswordChange,
    Me,
    Record,
    Outcome,
    CredentialsInput,
    CredentialsView,
    KeyMode,
    GatewayKind,
    SignType,
    Installation,
    RouteView,
    VersionView,
    Policy,
    Spec,
    Quotas,
    Price,
    Package,
    PackageVersion,
    PackageDetail,
    Assignment,
    Entitlement,
    Delivery,
    Recorded,
    ActivateRequest,
    OfferRequest,
    CreatePackageRequest,
    AssignRequest,
    RenewRequest,
    PublishEventRequest,
    Published,
    PluginConfig
)))]
struct Schemas;

/// What an operation answers with.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    One(&'static str, &'static str),
    /// A bare JSON array (a batch result), with its status.
    Many(&'static str, &'static str),
    List(&'static str),
    Empty(&'static str),
}

/// One documented operation.
#[derive(Debug, Clone)]
pub struct Operation {
    /// `get`, `post`, `patch` or `delete`.
    pub method: &'static str,
    pub path: String,
    pub summary: String,
    pub tag: &'static str,
    pub body: Option<&'static str>,
    pub answer: Answer,
    /// Query parameters (name, description).
    pub query: &'static [(&'static str, &'static str)],
    pub authenticated: bool,
}

const PAGE_QUERY: [(&str, &str); 2] = [
    ("page", "1-based page number"),
    ("per_page", "items per page, 1-200"),
];
const NODE_QUERY: [(&str, &str); 5] = [
    ("q", "substring of the name"),
    ("status", "active or suspended"),
    ("parent_id", "only direct children of this node"),
    PAGE_QUERY[0],
    PAGE_QUERY[1],
];
const USER_QUERY: [(&str, &str); 4] = [
    ("node_id", "accounts of this node and below"),
    ("q", "substring of the email"),
    PAGE_QUERY[0],
    PAGE_QUERY[1],
];
const KEY_QUERY: [(&str, &str); 3] = [
    ("node_id", "keys of this node and below"),
    PAGE_QUERY[0],
    PAGE_QUERY[1],
];
const AUDIT_QUERY: [(&str, &str); 8] = [
    ("node_id", "entries filed at this node and below"),
    ("action", "object.verb, e.g. merchant.create"),
    ("actor_id", "the account or key that acted"),
    ("outcome", "success, denied or failed"),
    ("since", "RFC 3339 time, inclusive"),
    ("until", "RFC 3339 time, exclusive"),
    PAGE_QUERY[0],
    PAGE_QUERY[1],
];

/// Every operation of the admin API.
pub fn operations() -> Vec<Operation> {
    let op =
        |method, path: &str, summary: &str, tag, body, answer, query, authenticated| Operation {
            method,
            path: path.to_owned(),
            summary: summary.to_owned(),
            tag,
            body,
            answer,
            query,
            authenticated,
        };
    let (get, post, patch, delete) = ("get", "post", "patch", "delete");
    let mut ops = vec![
        op(
            post,
            "/api/v1/auth/login",
            "Sign in; returns a session token and sets the session cookie",
            "auth",
            Some("LoginRequest"),
            Answer::One("200", "LoginResponse"),
            &[][..],
            false,
        ),
        op(
            post,
            "/api/v1/auth/logout",
            "End the current session",
            "auth",
            None,
            Answer::Empty("204"),
            &[],
            true,
        ),
        op(
            post,
            "/api/v1/auth/password",
            "Change your own password; other sessions end",
            "auth",
            Some("PasswordChange"),
            Answer::Empty("204"),
            &[],
            true,
        ),
        op(
            get,
            "/api/v1/me",
            "The caller, its node and what it may do",
            "auth",
            None,
            Answer::One("200", "Me"),
            &[],
            true,
        ),
        op(
            get,
            "/api/v1/users",
            "Accounts in your subtree",
            "users",
            None,
            Answer::List("User"),
            &USER_QUERY,
            true,
        ),
        op(
            post,
            "/api/v1/users",
            "Create an account on a node of your subtree",
            "users",
            Some("CreateUserRequest"),
            Answer::One("201", "User"),
            &[],
            true,
        ),
        op(
            get,
            "/api/v1/users/{id}",
            "One account",
            "users",
            None,
            Answer::One("200", "User"),
            &[],
            true,
        ),
        op(
            patch,
            "/api/v1/users/{id}",
            "Disable, re-enable or reset the password of an account",
            "users",
            Some("UserPatch"),
            Answer::One("200", "User"),
            &[],
            true,
        ),
        op(
            get,
            "/api/v1/api-keys",
            "API keys in your subtree",
            "api-keys",
            None,
            Answer::List("ApiKey"),
            &KEY_QUERY,
            true,
        ),
        op(
            post,
            "/api/v1/api-keys",
            "Create an API key for a node; the key is shown once",
            "api-keys",
            Some("CreateKeyRequest"),
            Answer::One("201", "CreatedKey"),
            &[],
            true,
        ),
        op(
            get,
            "/api/v1/api-keys/{id}",
            "One API key (never its secret)",
            "api-keys",
            None,
            Answer::One("200", "ApiKey"),
            &[],
            true,
        ),
        op(
            delete,
            "/api/v1/api-keys/{id}",
            "Revoke an API key",
            "api-keys",
            None,
            Answer::One("200", "ApiKey"),
            &[],
            true,
        ),
        op(
            get,
            "/api/v1/audit",
            "The audit log of your subtree, newest first",
            "audit",
            None,
            Answer::List("Record"),
            &AUDIT_QUERY,
            true,
        ),
    ];
    let credentials = "/api/v1/merchants/{id}/alipay/credentials";
    ops.push(op(
        get,
        credentials,
        "A merchant's Alipay credentials: non-secret fields only",
        "alipay",
        None,
        Answer::One("200", "CredentialsView"),
        &[],
        true,
    ));
    ops.push(op(
        "put",
        credentials,
        "Set or replace a merchant's Alipay credentials (secrets are sealed, never returned)",
        "alipay",
        Some("CredentialsInput"),
        Answer::One("200", "CredentialsView"),
        &[],
        true,
    ));
    ops.push(op(
        post,
        "/api/v1/merchants/{id}/alipay/keypair",
        "Generate the merchant's app key pair on the server; returns the public key to paste into Alipay",
        "alipay",
        None,
        Answer::One("201", "CredentialsView"),
        &[],
        true,
    ));
    ops.extend(platform_operations());
    for (kind, plural) in NODE_ROUTES {
        let name = kind.as_str();
        let base = format!("/api/v1/{plural}");
        let item = format!("{base}/{{id}}");
        ops.push(op(
            get,
            &base,
            &format!("List {plural} in your subtree"),
            plural,
            None,
            Answer::List("Node"),
            &NODE_QUERY,
            true,
        ));
        ops.push(op(
            post,
            &base,
            &format!("Create a {name}"),
            plural,
            Some("CreateNodeRequest"),
            Answer::One("201", "Node"),
            &[],
            true,
        ));
        ops.push(op(
            get,
            &item,
            &format!("One {name}"),
            plural,
            None,
            Answer::One("200", "Node"),
            &[],
            true,
        ));
        ops.push(op(
            patch,
            &item,
            &format!("Rename a {name} (partners: theme and domains too)"),
            plural,
            Some("NodePatch"),
            Answer::One("200", "Node"),
            &[],
            true,
        ));
        ops.push(op(
            post,
            &format!("{item}/suspend"),
            &format!("Suspend a {name}: sign-in and API use below it stop"),
            plural,
            None,
            Answer::One("200", "Node"),
            &[],
            true,
        ));
        ops.push(op(
            post,
            &format!("{item}/resume"),
            &format!("Reactivate a suspended {name}"),
            plural,
            None,
            Answer::One("200", "Node"),
            &[],
            true,
        ));
    }
    ops
}

fn schema_ref(name: &str) -> Ref {
    Ref::from_schema_name(name)
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(schema_ref("ErrorBody")))
                .build(),
        )
        .build()
}

/// The document, built once per call; cheap enough to build on request.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Schemas::openapi();
    doc.info = InfoBuilder::new()
        .title("Trellis admin API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Tenancy, accounts, API keys and the audit log. Authenticate with `Authorization: Bearer <token>` \
             (a session token from /api/v1/auth/login, or an API key) or the `trellis_session` cookie. \
             Errors are JSON `{code, message, field?}`; ids outside your subtree answer 404.",
        ))
        .build();
    if let Some(components) = doc.components.as_mut() {
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
    let mut paths = PathsBuilder::new().build();
    for operation in operations() {
        let mut builder = OperationBuilder::new()
            .summary(Some(operation.summary.clone()))
            .tag(operation.tag)
            .operation_id(Some(format!(
                "{}_{}",
                operation.method,
                operation
                    .path
                    .trim_start_matches("/api/v1/")
                    .replace(['/', '{', '}', '-'], "_")
            )));
        for name in operation
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        {
            builder = builder.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build(),
            );
        }
        for (name, description) in operation.query {
            builder = builder.parameter(
                ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(*description))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                    .build(),
            );
        }
        if let Some(body) = operation.body {
            builder = builder.request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(schema_ref(body))).build(),
                    )
                    .build(),
            ));
        }
        let mut responses = ResponsesBuilder::new();
        responses = match operation.answer {
            Answer::One(status, schema) => responses.response(
                status,
                ResponseBuilder::new().description("OK").content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(schema_ref(schema)))
                        .build(),
                ),
            ),
            Answer::Many(status, schema) => responses.response(
                status,
                ResponseBuilder::new().description("OK").content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ArrayBuilder::new().items(schema_ref(schema))))
                        .build(),
                ),
            ),
            Answer::List(schema) => {
                let page = ObjectBuilder::new()
                    .property("items", ArrayBuilder::new().items(schema_ref(schema)))
                    .property("page", ObjectBuilder::new().schema_type(Type::Integer))
                    .property("per_page", ObjectBuilder::new().schema_type(Type::Integer))
                    .property("total", ObjectBuilder::new().schema_type(Type::Integer))
                    .required("items")
                    .required("page")
                    .required("per_page")
                    .required("total");
                responses.response(
                    "200",
                    ResponseBuilder::new().description("One page").content(
                        "application/json",
                        ContentBuilder::new().schema(Some(page)).build(),
                    ),
                )
            }
            Answer::Empty(status) => {
                responses.response(status, ResponseBuilder::new().description("Done"))
            }
        };
        if operation.authenticated {
            responses = responses
                .response(
                    "401",
                    error_response("Not signed in, or the token is not valid on this host"),
                )
                .response(
                    "403",
                    error_response(
                        "The action is not allowed for your role here, or your node is suspended",
                    ),
                )
                .response("404", error_response("No such id in your subtree"));
            builder = builder.security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        } else {
            responses = responses
                .response("401", error_response("Wrong email or password"))
                .response(
                    "429",
                    error_response("Too many failed sign-ins; see Retry-After"),
                );
        }
        if operation.body.is_some() {
            responses = responses.response(
                "422",
                error_response("A field is invalid; `field` names it"),
            );
        }
        builder = builder.responses(responses.build());
        let method = match operation.method {
            "get" => HttpMethod::Get,
            "post" => HttpMethod::Post,
            "patch" => HttpMethod::Patch,
            "put" => HttpMethod::Put,
            _ => HttpMethod::Delete,
        };
        let item = PathItem::new(method, builder.build());
        match paths.paths.get_mut(&operation.path) {
            Some(existing) => existing.merge_operations(item),
            None => {
                paths.paths.insert(operation.path.clone(), item);
            }
        }
    }
    doc.paths = paths;
    doc
}

const DELIVERY_QUERY: [(&str, &str); 6] = [
    ("merchant_id", "deliveries to this merchant"),
    ("installation_id", "deliveries to this installation"),
    ("status", "pending, delivered, skipped or dead"),
    ("event_id", "deliveries of this event"),
    PAGE_QUERY[0],
    PAGE_QUERY[1],
];

const EVENT_QUERY: [(&str, &str); 6] = [
    ("merchant_id", "events of this merchant"),
    ("kind", "events of this kind"),
    ("source", "engine, api:<caller> or plugin:<id>"),
    ("root_id", "events of the chain this event started"),
    ("page", "1-based page number"),
    (
        "per_page",
        "events per page, 1 to 50 (each with its payload)",
    ),
];

const ASSIGNMENT_QUERY: [(&str, &str); 3] = [
    ("merchant_id", "assignments of this merchant"),
    PAGE_QUERY[0],
    PAGE_QUERY[1],
];

/// The plugin platform: catalog, packages, assignments, configuration, events.
fn platform_operations() -> Vec<Operation> {
    let op = |method, path: &str, summary: &str, tag, body, answer, query| Operation {
        method,
        path: path.to_owned(),
        summary: summary.to_owned(),
        tag,
        body,
        answer,
        query,
        authenticated: true,
    };
    let plugin = "/api/v1/partners/{id}/plugins/{plugin}";
    vec![
        op(
            "get",
            "/api/v1/plugins",
            "Plugins you can see: installed (partner), offered (agent), entitled (merchant)",
            "plugins",
            None,
            Answer::List("Installation"),
            &PAGE_QUERY[..],
        ),
        op(
            "get",
            "/api/v1/partners/{id}/plugins",
            "The partner's installed plugins",
            "plugins",
            None,
            Answer::List("Installation"),
            &PAGE_QUERY[..],
        ),
        op(
            "post",
            "/api/v1/partners/{id}/plugins",
            "Install a plugin or a new version: the .tplug archive is the body (application/octet-stream); ?activate=true moves merchants to it",
            "plugins",
            None,
            Answer::One("201", "Installation"),
            &[("activate", "move every merchant to this version now")],
        ),
        op(
            "get",
            plugin,
            "One installed plugin with its versions",
            "plugins",
            None,
            Answer::One("200", "Installation"),
            &[],
        ),
        op(
            "delete",
            plugin,
            "Uninstall (refused while an assignment uses it unless ?force=true); data is kept",
            "plugins",
            None,
            Answer::One("200", "Installation"),
            &[("force", "uninstall even while in use")],
        ),
        op(
            "post",
            &format!("{plugin}/activate"),
            "Move every merchant of the partner to an installed version",
            "plugins",
            Some("ActivateRequest"),
            Answer::One("200", "Installation"),
            &[],
        ),
        op(
            "post",
            &format!("{plugin}/rollback"),
            "Move every merchant back to the newest earlier version",
            "plugins",
            None,
            Answer::One("200", "Installation"),
            &[],
        ),
        op(
            "post",
            &format!("{plugin}/breaker/reset"),
            "Lift the plugin's suspensions after repeated failures (every merchant, every engine process)",
            "plugins",
            None,
            Answer::One("200", "Installation"),
            &[],
        ),
        op(
            "post",
            &format!("{plugin}/offer"),
            "Let (or stop letting) the partner's agents put the plugin in packages",
            "plugins",
            Some("OfferRequest"),
            Answer::One("200", "Installation"),
            &[],
        ),
        op(
            "get",
            "/api/v1/partners/{id}/plugin-policy",
            "The partner's signature policy for archives",
            "plugins",
            None,
            Answer::One("200", "Policy"),
            &[],
        ),
        op(
            "put",
            "/api/v1/partners/{id}/plugin-policy",
            "Require archives signed by trusted publisher keys",
            "plugins",
            Some("Policy"),
            Answer::One("200", "Policy"),
            &[],
        ),
        op(
            "get",
            "/api/v1/packages",
            "Packages in your subtree",
            "packages",
            None,
            Answer::List("Package"),
            &PAGE_QUERY[..],
        ),
        op(
            "post",
            "/api/v1/packages",
            "Create a package (a draft) for an agent",
            "packages",
            Some("CreatePackageRequest"),
            Answer::One("201", "Package"),
            &[],
        ),
        op(
            "get",
            "/api/v1/packages/{id}",
            "A package with its published versions",
            "packages",
            None,
            Answer::One("200", "PackageDetail"),
            &[],
        ),
        op(
            "put",
            "/api/v1/packages/{id}",
            "Replace the draft; merchants see it only once published and assigned or renewed",
            "packages",
            Some("Spec"),
            Answer::One("200", "Package"),
            &[],
        ),
        op(
            "post",
            "/api/v1/packages/{id}/publish",
            "Publish the draft as the next version",
            "packages",
            None,
            Answer::One("200", "PackageVersion"),
            &[],
        ),
        op(
            "post",
            "/api/v1/packages/{id}/assignments",
            "Assign the latest published version to merchants of the package's agent",
            "packages",
            Some("AssignRequest"),
            Answer::Many("201", "Assignment"),
            &[],
        ),
        op(
            "get",
            "/api/v1/assignments",
            "Assignments in your subtree (a merchant: its own)",
            "packages",
            None,
            Answer::List("Assignment"),
            &ASSIGNMENT_QUERY[..],
        ),
        op(
            "post",
            "/api/v1/assignments/{id}/renew",
            "Extend an assignment and move it to the package's latest version",
            "packages",
            Some("RenewRequest"),
            Answer::One("200", "Assignment"),
            &[],
        ),
        op(
            "post",
            "/api/v1/assignments/{id}/revoke",
            "End an assignment now",
            "packages",
            None,
            Answer::One("200", "Assignment"),
            &[],
        ),
        op(
            "get",
            "/api/v1/merchants/{id}/entitlements",
            "What the merchant is entitled to now",
            "packages",
            None,
            Answer::Many("200", "Entitlement"),
            &[],
        ),
        op(
            "get",
            "/api/v1/merchants/{id}/plugin-configs/{plugin}",
            "The merchant's configuration of a plugin",
            "plugins",
            None,
            Answer::One("200", "PluginConfig"),
            &[],
        ),
        op(
            "put",
            "/api/v1/merchants/{id}/plugin-configs/{plugin}",
            "Set the configuration: checked against the manifest's JSON Schema, then the plugin's configure hook",
            "plugins",
            Some("PluginConfig"),
            Answer::One("200", "PluginConfig"),
            &[],
        ),
        op(
            "post",
            "/api/v1/merchants/{id}/events",
            "Send an event for a merchant to every subscribing plugin",
            "events",
            Some("PublishEventRequest"),
            Answer::One("202", "Published"),
            &[],
        ),
        op(
            "get",
            "/api/v1/merchants/{id}/events",
            "A merchant's event log, newest first, with payloads",
            "events",
            None,
            Answer::List("Recorded"),
            &EVENT_QUERY[1..],
        ),
        op(
            "get",
            "/api/v1/events",
            "The event log: what the engine, partners and plugins recorded, newest first, with payloads",
            "events",
            None,
            Answer::List("Recorded"),
            &EVENT_QUERY[..],
        ),
        op(
            "get",
            "/api/v1/deliveries",
            "The event delivery log",
            "events",
            None,
            Answer::List("Delivery"),
            &DELIVERY_QUERY[..],
        ),
        op(
            "post",
            "/api/v1/deliveries/{id}/redeliver",
            "Queue a finished delivery again",
            "events",
            None,
            Answer::One("200", "Delivery"),
            &[],
        ),
    ]
}
