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
/// the sandbox's public key as "Alipay's", the sandbox gateway.
async fn wire_to_sandbox(
    db: &DatabaseConnection,
    vault: &Vault,
    rbac: &Rbac,
    actor: &Principal,
    merchant: &crate::tenancy::Place,
    base: &str,
) -> Result<String, Error> {
    const DEMO_APP_ID: &str = "2021000000000001";
    let sandbox = Sandbox::open(db.clone(), base, 1).await?;
    let grant = rbac
        .authorize(actor, Action::AlipayCredentialsWrite, merchant)
        .await?;
    let generated = credentials::generate_keypair(db, vault, &grant).await?;
    let app_public = generated.app_public_key.clone().unwrap_or_default();
    sandbox
        .register_app(DEMO_APP_ID, &app_public, None, false)
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
}

fn password() -> Result<SecretString, Error> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|_| auth::Error::Hash)?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(SecretString::from(format!("demo-{text}")))
}

/// Seeds the demo tree; returns the text to print (with the passwords), or `None` when the
/// demo already exists.
pub async fn seed(
    db: &DatabaseConnection,
    vault: &Vault,
    sandbox_base: Option<&str>,
) -> Result<Option<String>, Error> {
    if tenancy::partner_for_host(db, DEMO_DOMAIN).await?.is_some() {
        return Ok(None);
    }
    let mut out = String::from("Demo data created. These passwords are shown once:\n\n");
    let admin_password = password()?;
    let admin_email = "platform-admin@demo.trellis.test".to_owned();
    let admin = auth::create_platform_admin(db, &admin_email, &admin_password).await?;
    out.push_str(&format!(
        "  platform_admin  {admin_email:<36} {}   (sign in at http://127.0.0.1:8080)\n",
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
        let node = tenancy::create(db, &grant, kind, input).await?;
        let place = node.place();
        let role = Role::for_kind(kind);
        let user_password = password()?;
        let email = format!("{}@demo.trellis.test", role.as_str().replace('_', "-"));
        let grant = rbac.authorize(&actor, Action::UserCreate, &place).await?;
        let user = auth::create_user(
            db,
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
            "  {:<15} {email:<36} {}   (sign in at http://{DEMO_DOMAIN}:8080)\n",
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
    out.push_str("\nSign in: POST /api/v1/auth/login {\"email\": …, \"password\": …}\n");
    Ok(Some(out))
}
