//! `trellis alipay …`: the engine's own signer and verifier as command-line tools, so an
//! integrator can see the exact string signed and check a signature without writing code.
//! Exit 0 when valid, 1 when a signature is invalid, 2 on bad input.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use clap::Subcommand;
use secrecy::{ExposeSecret, SecretString};

use super::Failure;
use crate::alipay::aes::AesKey;
use crate::alipay::notify::{Notification, NotifyRule};
use crate::alipay::response::verify_response;
use crate::alipay::signing::sign_content;
use crate::alipay::{PrivateKey, PublicKey, SignType, cert};

#[derive(Debug, Subcommand)]
pub enum AlipayCommand {
    /// Generate a 2048-bit app key pair; prints the private key and the public key to paste into Alipay.
    Keygen {
        /// Print the private key as PKCS#1 (what the Python SDK and older tools want).
        #[arg(long, conflicts_with = "pkcs8")]
        pkcs1: bool,
        /// Print the private key as PKCS#8 (the default; what Java integrations want).
        #[arg(long)]
        pkcs8: bool,
    },
    /// Sign parameters given as key=value; prints the string to sign and the sign.
    Sign {
        #[arg(long, value_name = "FILE")]
        private_key: PathBuf,
        #[arg(long, default_value = "RSA2")]
        sign_type: String,
        #[arg(value_name = "KEY=VALUE", required = true)]
        params: Vec<String>,
    },
    /// Verify a notification (form body on stdin); V1 (drop sign and sign_type) unless --v2.
    VerifyNotify {
        #[arg(long, value_name = "FILE")]
        alipay_public_key: PathBuf,
        /// Gateway-message rule: keep sign_type in the signed content.
        #[arg(long)]
        v2: bool,
    },
    /// Verify a synchronous gateway response (JSON body on stdin).
    VerifyResponse {
        #[arg(long)]
        method: String,
        #[arg(long, value_name = "FILE")]
        alipay_public_key: PathBuf,
        #[arg(long, default_value = "RSA2")]
        sign_type: String,
    },
    /// Print the SN of a certificate (app_cert_sn / alipay_cert_sn).
    CertSn { file: PathBuf },
    /// Print alipay_root_cert_sn of a root bundle.
    RootCertSn { file: PathBuf },
    /// AES-128-CBC encrypt stdin with a base64 key (encrypt_type=AES).
    AesEncrypt {
        #[arg(long)]
        key: String,
    },
    /// AES-128-CBC decrypt base64 stdin with a base64 key.
    AesDecrypt {
        #[arg(long)]
        key: String,
    },
}

fn usage(error: impl std::fmt::Display) -> Failure {
    Failure::Usage(error.to_string())
}

fn read_file(path: &PathBuf) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))
}

fn stdin() -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| usage(format!("cannot read stdin: {e}")))?;
    Ok(buf)
}

fn invalid() -> Failure {
    Failure::Runtime("the signature is INVALID".to_owned())
}

pub(super) fn run(command: AlipayCommand) -> Result<(), Failure> {
    match command {
        AlipayCommand::Keygen { pkcs1, .. } => {
            let key = PrivateKey::generate().map_err(|e| Failure::Runtime(e.to_string()))?;
            let (label, private) = if pkcs1 {
                (
                    "PKCS#1",
                    key.to_pkcs1_base64()
                        .map_err(|e| Failure::Runtime(e.to_string()))?,
                )
            } else {
                ("PKCS#8", key.to_pkcs8_base64())
            };
            println!("# app private key ({label}); keep it secret, store it encrypted");
            println!("{}", private.expose_secret());
            println!();
            println!("# app public key: paste into Alipay's console as 应用公钥");
            println!("{}", key.public_key().to_base64());
            println!();
            println!("# fingerprint: {}", key.public_key().fingerprint());
            Ok(())
        }
        AlipayCommand::Sign {
            private_key,
            sign_type,
            params,
        } => {
            let sign_type = SignType::parse(&sign_type).map_err(usage)?;
            let key =
                PrivateKey::parse(&SecretString::from(read_file(&private_key)?)).map_err(usage)?;
            let mut map = BTreeMap::new();
            for pair in params {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| usage(format!("{pair:?} is not KEY=VALUE")))?;
                map.insert(k.to_owned(), v.to_owned());
            }
            let content = sign_content(&map);
            let sign = key
                .sign(sign_type, &content)
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            println!("string to sign: {content}");
            println!("sign: {sign}");
            Ok(())
        }
        AlipayCommand::VerifyNotify {
            alipay_public_key,
            v2,
        } => {
            let key = PublicKey::parse(&read_file(&alipay_public_key)?).map_err(usage)?;
            let notification = Notification::parse(&stdin()?).map_err(usage)?;
            let rule = if v2 { NotifyRule::V2 } else { NotifyRule::V1 };
            println!("signed content: {}", notification.signed_content(rule));
            notification.sign_type().map_err(usage)?;
            notification.verify(&key, rule).map_err(|_| invalid())?;
            println!("valid");
            Ok(())
        }
        AlipayCommand::VerifyResponse {
            method,
            alipay_public_key,
            sign_type,
        } => {
            let sign_type = SignType::parse(&sign_type).map_err(usage)?;
            let key = PublicKey::parse(&read_file(&alipay_public_key)?).map_err(usage)?;
            let body = String::from_utf8(stdin()?).map_err(|_| usage("the body is not UTF-8"))?;
            match verify_response(&body, &method, sign_type, &key) {
                Ok(verified) => {
                    println!("signed content: {}", verified.signed_text);
                    println!("valid");
                    Ok(())
                }
                Err(crate::alipay::Error::InvalidSignature) => Err(invalid()),
                Err(crate::alipay::Error::UnsignedError { code, sub_code, .. }) => {
                    Err(Failure::Runtime(format!(
                        "an unsigned error_response ({code} {}) proves nothing",
                        sub_code.unwrap_or_default()
                    )))
                }
                Err(other) => Err(usage(other)),
            }
        }
        AlipayCommand::CertSn { file } => {
            println!("{}", cert::cert_sn(&read_file(&file)?).map_err(usage)?);
            Ok(())
        }
        AlipayCommand::RootCertSn { file } => {
            println!("{}", cert::root_cert_sn(&read_file(&file)?).map_err(usage)?);
            Ok(())
        }
        AlipayCommand::AesEncrypt { key } => {
            let key = AesKey::parse(&SecretString::from(key)).map_err(usage)?;
            let text = String::from_utf8(stdin()?).map_err(|_| usage("stdin is not UTF-8"))?;
            println!(
                "{}",
                key.encrypt(text.trim_end_matches('\n')).map_err(usage)?
            );
            Ok(())
        }
        AlipayCommand::AesDecrypt { key } => {
            let key = AesKey::parse(&SecretString::from(key)).map_err(usage)?;
            let text = String::from_utf8(stdin()?).map_err(|_| usage("stdin is not UTF-8"))?;
            println!(
                "{}",
                key.decrypt(text.trim())
                    .map_err(|_| usage("not a ciphertext of this key"))?
            );
            Ok(())
        }
    }
}
