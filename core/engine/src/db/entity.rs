//! sea-orm entities, one file per table; the schema itself is owned by `trellis-migrations`.

pub mod alipay_credentials;
pub mod alipay_notifications;
pub mod api_keys;
pub mod audit_log;
pub mod login_failures;
pub mod nodes;
pub mod partner_domains;
pub mod sessions;
pub mod users;
