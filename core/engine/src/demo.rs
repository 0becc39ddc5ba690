//! Demo data: a small tenant tree with an account of every role, created through the same
//! authorization and store functions as the API, so the demo exercises the real rules.
//!
//! Invariant: seeding is idempotent: it creates nothing when the demo partner's domain exists.

use sea_orm::DatabaseConnection;
use secrecy::{ExposeSecret, SecretString};

use crate::alipay::credentials;
use crate::alipay::sandbox::Sandbox;
use crate::auth::{self, NewUser, Principal, PrincipalKind};
use crate::rbac::{Action, Rbac, SubjectRef};
use crate::secrets::Vault;
use crate::tenancy::{self, NewNode, NodeKind, Role};

/// The host the demo partner answers on; the platform console is any other host (127.0.0.1).
pub const DEMO_DOMAIN: &str = "localhost";

/// The demo merchant's Alipay app, registered with the offline sandbox: a server-side key pair,
/// the sandbox's public key as "Alipay's", the sandbox gateway. The app is in OpenID mode, as
/// Alipay creates new apps: it learns a consumer's `open_id`, never the `user_id`.
async fn wire_to_sandbox(
    db: &DatabaseConnection,
    vault: &Vault,
    rbac: &Rbac,
    actor: &Principal,
    merchant: &crate::tenancy::Place,
    base: &str,
) -> Result<String, Error> {
    const DEMO_APP_ID: &str = "2021000000000001";
    let sandbox = Sandbox::open(db.clone(), base, 1, None).await?;
    let grant = rbac
        .authorize(actor, Action::AlipayCredentialsWrite, merchant)
        .await?;
    let generated = credentials::generate_keypair(db, vault, &grant).await?;
    let app_public = generated.app_public_key.clone().unwrap_or_default();
    sandbox
        .register_app_as(
            DEMO_APP_ID,
            &app_public,
            None,
            false,
            crate::alipay::sandbox::Identity::OpenId,
        )
        .await?;
    let input = credentials::CredentialsInput {
        app_id: DEMO_APP_ID.to_owned(),
        sign_type: None,
        key_mode: credentials::KeyMode::PublicKey,
        app_private_key: None,
        alipay_public_key: Some(sandbox.public_key().to_base64()),
        app_cert: None,
        alipay_cert: None,
        alipay_root_cert: None,
        aes_key: None,
        gateway: credentials::GatewayKind::Custom,
        gateway_url: Some(sandbox.gateway_url()),
    };
    credentials::put(db, vault, &grant, input).await?;
    Ok(format!(
        "  (the demo merchant's Alipay app {DEMO_APP_ID} talks to the offline sandbox at {base})\n"
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
    #[error(transparent)]
    Sandbox(#[from] crate::alipay::sandbox::Error),
    #[error(transparent)]
    Tenancy(#[from] tenancy::Error),
    #[error(transparent)]
    Auth(#[from] auth::Error),
    #[error(transparent)]
    Rbac(#[from] crate::rbac::Error),
    #[error(transparent)]
    Catalog(#[from] crate::plugins::catalog::Error),
    #[error(transparent)]
    Packages(#[from] crate::packages::Error),
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("{0}")]
    Missing(String),
}

fn password() -> Result<SecretString, Error> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|_| auth::Error::Hash)?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(SecretString::from(format!("demo-{text}")))
}

/// Seeds the demo tree; returns the text to print (with the passwords and where each account
/// signs in, on `port`), or `None` when the demo already exists.
pub async fn seed(
    db: &DatabaseConnection,
    vault: &Vault,
    sandbox_base: Option<&str>,
    port: u16,
) -> Result<Option<String>, Error> {
    if tenancy::partner_for_host(db, DEMO_DOMAIN).await?.is_some() {
        return Ok(None);
    }
    let mut out = String::from("Demo data created. These passwords are shown once:\n\n");
    let admin_password = password()?;
    let admin_email = "platform-admin@demo.trellis.test".to_owned();
    let admin = auth::create_platform_admin(db, &admin_email, &admin_password).await?;
    out.push_str(&format!(
        "  platform_admin  {admin_email:<36} {}   (sign in at http://127.0.0.1:{port}/console)\n",
        admin_password.expose_secret()
    ));
    let rbac = Rbac::load(db.clone()).await?;
    let platform = tenancy::ensure_platform(db).await?;
    let actor = Principal {
        kind: PrincipalKind::User,
        id: admin.id,
        label: admin.email,
        role: Role::PlatformAdmin,
        place: platform.clone(),
        session_id: None,
    };
    let hasher = auth::Hasher::new(1, 8);
    let mut parent = platform;
    for (kind, name) in [
        (NodeKind::Partner, "Demo Partner 演示服务商"),
        (NodeKind::Agent, "Demo Agent 演示代理商"),
        (NodeKind::Merchant, "Demo Merchant 演示商户"),
        (NodeKind::Store, "Demo Store 演示门店"),
    ] {
        let grant = rbac
            .authorize(&actor, Action::create_node(kind), &parent)
            .await?;
        let input = NewNode {
            name: name.to_owned(),
            theme: None,
            domains: (kind == NodeKind::Partner).then(|| vec![DEMO_DOMAIN.to_owned()]),
        };
        // The demo's own domain is `localhost`; console hosts are matched before partner
        // domains, so even a console configured on `localhost` could not be taken over by it.
        let node = tenancy::create(db, &grant, kind, input, &[]).await?;
        let place = node.place();
        let role = Role::for_kind(kind);
        let user_password = password()?;
        let email = format!("{}@demo.trellis.test", role.as_str().replace('_', "-"));
        let grant = rbac.authorize(&actor, Action::UserCreate, &place).await?;
        let user = auth::create_user(
            db,
            &hasher,
            &grant,
            NewUser {
                email: email.clone(),
                password: user_password.clone(),
                role: Some(role),
            },
        )
        .await?;
        rbac.subject_changed(SubjectRef::User(&user.id)).await?;
        out.push_str(&format!(
            "  {:<15} {email:<36} {}   (sign in at http://{DEMO_DOMAIN}:{port}/console)\n",
            role.as_str(),
            user_password.expose_secret()
        ));
        if kind == NodeKind::Merchant
            && let Some(base) = sandbox_base
            && vault.is_configured()
        {
            out.push_str(&wire_to_sandbox(db, vault, &rbac, &actor, &place, base).await?);
        }
        parent = place;
    }
    out.push_str(
        "\nSign in in a browser at the console, or: POST /api/v1/auth/login {\"email\": …, \"password\": …}\n",
    );
    Ok(Some(out))
}

/// The demo package's name.
pub const DEMO_PACKAGE: &str = "Demo package 演示套餐";

/// The first platform administrator, acting for commands run on the server itself.
pub async fn operator(db: &DatabaseConnection) -> Result<Principal, Error> {
    use crate::db::entity::users;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    let admin = users::Entity::find()
        .filter(users::Column::Role.eq(Role::PlatformAdmin.as_str()))
        .filter(users::Column::Status.eq("active"))
        .order_by_asc(users::Column::CreatedAt)
        .one(db)
        .await?
        .ok_or_else(|| {
            Error::Missing("no platform administrator: run `trellis admin create` first".into())
        })?;
    Ok(Principal {
        kind: PrincipalKind::User,
        id: admin.id,
        label: admin.email,
        role: Role::PlatformAdmin,
        place: tenancy::ensure_platform(db).await?,
        session_id: None,
    })
}

/// Installs the given first-party archives for the demo partner, offers them to its agents,
/// keeps a demo package holding all of them published, and assigns it to the demo merchant for
/// a year. Idempotent: run on every `make run`, it only adds what changed.
pub async fn seed_plugins(
    catalog: &crate::plugins::catalog::Catalog,
    archives: &[(String, Vec<u8>)],
) -> Result<String, Error> {
    use crate::db::entity::nodes;
    use crate::packages::{self, Quotas, Spec};
    use crate::plugins::catalog::Error as CatalogError;
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

    let db = &catalog.db;
    let Some(host) = tenancy::partner_for_host(db, DEMO_DOMAIN).await? else {
        return Ok(String::new());
    };
    let actor = operator(db).await?;
    let rbac = Rbac::load(db.clone()).await?;
    let partner = tenancy::place(db, &host.partner_id)
        .await?
        .ok_or_else(|| Error::Missing("the demo partner".into()))?;
    let grant = rbac
        .authorize(&actor, Action::PluginManage, &partner)
        .await?;
    let mut out = String::new();
    for (name, bytes) in archives {
        match catalog.install(&grant, bytes, true).await {
            Ok(installed) => {
                catalog.offer(&grant, &installed.plugin_id, true).await?;
                out.push_str(&format!(
                    "  plugin {} {} installed for the demo partner\n",
                    installed.plugin_id, installed.active_version
                ));
            }
            Err(CatalogError::VersionExists { plugin, version }) => {
                out.push_str(&format!(
                    "  plugin {plugin} {version} is installed with other contents; bump its version to install {name}\n"
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let offered = catalog.offered(&host.partner_id).await?;
    if offered.is_empty() {
        return Ok(out);
    }
    let find_child = |kind: NodeKind| {
        nodes::Entity::find()
            .filter(nodes::Column::Kind.eq(kind.as_str()))
            .filter(nodes::Column::PartnerId.eq(host.partner_id.clone()))
            .order_by_asc(nodes::Column::CreatedAt)
            .one(db)
    };
    let agent_id = find_child(NodeKind::Agent)
        .await?
        .ok_or_else(|| Error::Missing("the demo agent".into()))?
        .id;
    let merchant_id = find_child(NodeKind::Merchant)
        .await?
        .ok_or_else(|| Error::Missing("the demo merchant".into()))?
        .id;
    let agent = tenancy::place(db, &agent_id)
        .await?
        .ok_or_else(|| Error::Missing("the demo agent".into()))?;
    let merchant = tenancy::place(db, &merchant_id)
        .await?
        .ok_or_else(|| Error::Missing("the demo merchant".into()))?;
    let now = catalog.now();
    let spec = Spec {
        name: DEMO_PACKAGE.into(),
        description: "Every first-party plugin, for trying Trellis out.".into(),
        plugins: offered.iter().cloned().collect(),
        validity_days: 365,
        quotas: Quotas::default(),
        list_price: Some(packages::Price {
            amount: 0,
            currency: "CNY".into(),
        }),
    };
    let write = rbac.authorize(&actor, Action::PackageWrite, &agent).await?;
    let all = crate::db::Page {
        page: 1,
        per_page: crate::db::Page::MAX_PER_PAGE,
    };
    let existing = packages::list(db, &agent, all)
        .await?
        .items
        .into_iter()
        .find(|p| p.draft.name == DEMO_PACKAGE);
    let package = match existing {
        Some(p) => packages::update_draft(db, &write, &p.id, spec, &offered, now).await?,
        None => packages::create(db, &write, spec, &offered, now).await?,
    };
    packages::publish(db, &write, &package.id, &offered, now).await?;
    let package = packages::get(db, &agent, &package.id).await?;
    let assign = rbac
        .authorize(&actor, Action::AssignmentWrite, &merchant)
        .await?;
    let current =
        packages::list_assignments(db, &merchant, merchant.merchant_id.as_deref(), now, all)
            .await?
            .items
            .into_iter()
            .find(|a| a.package_id == package.id && a.state == "active");
    match current {
        Some(a) if a.package_version == package.published_version => {}
        Some(a) => {
            packages::renew(db, &assign, &a, Some(a.ends_at), now).await?;
        }
        None => {
            packages::assign(db, &[assign], &package, now, None, now).await?;
            out.push_str(&format!(
                "  package \"{DEMO_PACKAGE}\" assigned to the demo merchant for 365 days\n"
            ));
        }
    }
    Ok(out)
}
