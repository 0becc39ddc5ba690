//! The engine's Alipay signer and verifier against golden vectors made by Alipay's official
//! Node SDK and re-checked by its official Python SDK (`tests/vectors/gen`), with test keys.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixtures fail loudly"
)]

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde_json::Value;
use trellis_alipay::aes::AesKey;
use trellis_alipay::notify::{Notification, NotifyRule};
use trellis_alipay::response::verify_response;
use trellis_alipay::signing::sign_content;
use trellis_alipay::{PrivateKey, PublicKey, SignType, cert};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DIR}{name}")).unwrap()
}

fn json(name: &str) -> Value {
    serde_json::from_str(&read(name)).unwrap()
}

#[test]
fn request_signatures_match_the_official_sdks_byte_for_byte() {
    let vectors = json("requests.json");
    let pkcs1 = PrivateKey::parse(&SecretString::from(read("keys/app_private_pkcs1.pem"))).unwrap();
    let pkcs8 = PrivateKey::parse(&SecretString::from(read("keys/app_private_pkcs8.pem"))).unwrap();
    let public = PublicKey::parse(vectors["app_public_key"].as_str().unwrap()).unwrap();
    let cases = vectors["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        assert_eq!(
            case["python_sdk_sign_matches"], true,
            "{name}: both SDKs agree"
        );
        let params: BTreeMap<String, String> = case["params"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let content = sign_content(&params);
        assert_eq!(content, case["sign_content"].as_str().unwrap(), "{name}");
        let sign_type = SignType::parse(case["sign_type"].as_str().unwrap()).unwrap();
        let expected = case["sign"].as_str().unwrap();
        assert_eq!(
            pkcs1.sign(sign_type, &content).unwrap(),
            expected,
            "{name} (PKCS#1 key)"
        );
        assert_eq!(
            pkcs8.sign(sign_type, &content).unwrap(),
            expected,
            "{name} (PKCS#8 key)"
        );
        assert!(public.verify(sign_type, content.as_bytes(), expected));
    }
}

#[test]
fn responses_verify_exactly_when_the_official_sdks_say_so() {
    let vectors = json("responses.json");
    let alipay = PublicKey::parse(vectors["alipay_public_key"].as_str().unwrap()).unwrap();
    for case in vectors["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let sign_type = SignType::parse(case["sign_type"].as_str().unwrap()).unwrap();
        let result = verify_response(
            case["body"].as_str().unwrap(),
            case["method"].as_str().unwrap(),
            sign_type,
            &alipay,
        );
        let expected = case["expected_valid"].as_bool().unwrap();
        assert_eq!(
            case["python_sdk_verifies"].as_bool().unwrap(),
            expected,
            "{name}"
        );
        assert_eq!(result.is_ok(), expected, "{name}: {result:?}");
        if let Ok(verified) = result {
            assert_eq!(
                verified.signed_text,
                case["signed_text"].as_str().unwrap(),
                "{name}"
            );
        }
    }
}

#[test]
fn notifications_verify_under_their_rule_as_the_official_sdks_do() {
    let vectors = json("notifications.json");
    let alipay = PublicKey::parse(vectors["alipay_public_key"].as_str().unwrap()).unwrap();
    for case in vectors["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in case["form_params"].as_object().unwrap() {
            form.append_pair(k, v.as_str().unwrap());
        }
        let notification = Notification::parse(form.finish().as_bytes()).unwrap();
        let rule = if case["rule"] == "V1" {
            NotifyRule::V1
        } else {
            NotifyRule::V2
        };
        assert_eq!(
            notification.signed_content(rule),
            case["sign_content"].as_str().unwrap(),
            "{name}"
        );
        assert!(notification.verify(&alipay, rule).is_ok(), "{name}");
        assert_eq!(notification.verify_auto(&alipay).unwrap(), rule, "{name}");
        assert_eq!(case["python_sdk_verifies"], true);
    }
}

#[test]
fn aes_matches_the_official_sdk() {
    for case in json("aes.json")["cases"].as_array().unwrap() {
        let key = AesKey::parse(&SecretString::from(
            case["key"].as_str().unwrap().to_owned(),
        ))
        .unwrap();
        let plain = case["plaintext"].as_str().unwrap();
        let cipher = case["ciphertext"].as_str().unwrap();
        assert_eq!(key.encrypt(plain).unwrap(), cipher);
        assert_eq!(key.decrypt(cipher).unwrap(), plain);
    }
}

#[test]
fn certificate_sns_match_the_official_sdk_and_only_the_real_root_is_trusted() {
    let expected = json("certs.json");
    let app = read("certs/app_cert.pem");
    let alipay = read("certs/alipay_cert.pem");
    let bundle = read("certs/root_bundle.pem");
    assert_eq!(
        cert::cert_sn(&app).unwrap(),
        expected["app_cert_sn"].as_str().unwrap()
    );
    assert_eq!(
        cert::cert_sn(&alipay).unwrap(),
        expected["alipay_cert_sn"].as_str().unwrap()
    );
    assert_eq!(
        cert::root_cert_sn(&bundle).unwrap(),
        expected["root_cert_sn"].as_str().unwrap(),
        "the ECDSA root is skipped"
    );
    let now = chrono::Utc::now();
    let (sn, key) = cert::trust(&alipay, &bundle, now).unwrap();
    assert_eq!(sn, expected["alipay_cert_sn"].as_str().unwrap());
    let alipay_key = PublicKey::parse(&read("keys/alipay_public.pem")).unwrap();
    assert_eq!(key.fingerprint(), alipay_key.fingerprint());
    assert!(
        cert::trust(&read("certs/forged_alipay_cert.pem"), &bundle, now).is_err(),
        "a stranger's signature"
    );
    assert!(
        cert::trust(&alipay, &bundle, now + chrono::Duration::days(365 * 30)).is_err(),
        "expired"
    );
}
