//! Alipay in the engine: the protocol comes from `trellis-alipay` (re-exported here so the
//! engine names one `alipay`), and this module adds what needs the engine — merchants' sealed
//! credentials and the durable intake of Alipay's notifications. The offline sandbox
//! (`trellis-alipay-sandbox`) is re-exported as `sandbox`.
//!
//! Invariant: a merchant's private key is unsealed only to sign that merchant's request, and
//! a notification is acted on only after it verified with the key that merchant registered.

pub use trellis_alipay::{
    Error, PrivateKey, PublicKey, SignType, aes, cert, client, codes, gateway, keys, notify, oauth,
    response, signing,
};
pub use trellis_alipay_sandbox as sandbox;

pub mod credentials;
pub mod inbound;
pub mod parsed;
