//! Demo data: a small tenant tree with an account of every role, created through the same
//! authorization and store functions as the API, so the demo exercises the real rules.
//!
//! Invariant: seeding is idempotent: it creates nothing when the demo partner's domain exists.

use sea_orm::DatabaseConnection;
use secrecy::{ExposeSecret, SecretString};

use crate::auth::{self, NewUser, Principal, PrincipalKind};
use crate::rbac::{Action, Rbac, SubjectRef};
use crate::tenancy::{self, NewNode, NodeKind, Role};

/// The host the demo partner answers on; the platform console is any other host (127.0.0.1).
pub const DEMO_DOMAIN: &str = "localhost";

#[derive(Debug, thiserror::Error)]
pub enum Error {
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
pub async fn seed(db: &DatabaseConnection) -> Result<Option<String>, Error> {
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
        parent = place;
    }
    out.push_str("\nSign in: POST /api/v1/auth/login {\"email\": …, \"password\": …}\n");
    Ok(Some(out))
}
