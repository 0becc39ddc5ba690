//! The sandbox refuses what real Alipay refuses — or what would show a broken card — in the
//! requests the membership flow used to send: each request below is the old shape, sent through
//! the engine's own client (signed, as the engine sends) to the sandbox served by the engine, and
//! each is refused with Alipay's codes; the corrected shape beside it is accepted. Requests are
//! the ones `docs/alipay.md` tabulates; the sandbox's logic does not depend on the database, so
//! these run on SQLite.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use secrecy::SecretString;
use serde_json::{Value, json};
use trellis_engine::alipay::client::{AlipayClient, CallOptions, MerchantApp};
use trellis_engine::alipay::gateway::GatewayPolicy;
use trellis_engine::alipay::signing::{AppIdentity, RequestSpec, sign_request};
use trellis_engine::alipay::{Error, PrivateKey, PublicKey, SignType};
use trellis_tests::{Engine, client, png, register_sandbox_app};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");

fn app_key() -> PrivateKey {
    PrivateKey::parse(&SecretString::from(
        std::fs::read_to_string(format!("{VECTORS}keys/app_private_pkcs8.pem")).unwrap(),
    ))
    .unwrap()
}

async fn app(engine: &Engine, app_id: &str, identity: &str) -> MerchantApp {
    let key = app_key();
    let registered = register_sandbox_app(
        engine,
        json!({"app_id": app_id, "app_public_key": key.public_key().to_base64(), "identity": identity}),
    )
    .await;
    MerchantApp {
        merchant_id: "m".into(),
        app_id: app_id.into(),
        sign_type: SignType::Rsa2,
        private_key: key,
        alipay_public_key: PublicKey::parse(registered["alipay_public_key"].as_str().unwrap())
            .unwrap(),
        aes: None,
        gateway_url: registered["gateway_url"].as_str().unwrap().to_owned(),
        cert_sns: None,
        alipay_cert_sn: None,
        alipay_root_cert: None,
    }
}

fn alipay() -> AlipayClient {
    AlipayClient::with_policy(
        GatewayPolicy::local_sandbox(),
        Duration::from_secs(5),
        Duration::from_secs(20),
    )
    .unwrap()
}

/// Alipay's `code` and `sub_code` of a refusal.
fn codes(result: Result<Value, Error>) -> (String, String) {
    match result {
        Err(Error::Gateway(g)) => (g.code, g.sub_code.unwrap_or_default()),
        other => panic!("expected Alipay's refusal, got {other:?}"),
    }
}

struct Merchant {
    engine: Engine,
    /// Kept for the engine's lifetime (dropping it removes the database).
    _db: trellis_tests::TestDb,
    app: MerchantApp,
    alipay: AlipayClient,
    logo: String,
    background: String,
}

impl Merchant {
    async fn new(identity: &str) -> Self {
        let db = trellis_tests::sqlite();
        let engine = Engine::start(&db.url(), &[("TRELLIS_SANDBOX__ENABLED", "true")]);
        let app = app(&engine, "2021004199990042", identity).await;
        let alipay = alipay();
        let mut ids = Vec::new();
        for image in [png(600, 600), png(1020, 643)] {
            let uploaded = alipay
                .upload_image(&app, "png", "card", image)
                .await
                .unwrap();
            ids.push(uploaded["image_id"].as_str().unwrap().to_owned());
        }
        let [logo, background] = <[String; 2]>::try_from(ids).unwrap();
        Self {
            engine,
            _db: db,
            app,
            alipay,
            logo,
            background,
        }
    }

    async fn call(&self, method: &str, biz: &Value) -> Result<Value, Error> {
        self.alipay
            .call(&self.app, method, Some(biz), &CallOptions::default())
            .await
    }

    async fn call_as(&self, method: &str, biz: &Value, token: &str) -> Result<Value, Error> {
        let options = CallOptions {
            auth_token: Some(token.to_owned()),
            ..CallOptions::default()
        };
        self.alipay
            .call(&self.app, method, Some(biz), &options)
            .await
    }

    /// A template.create body as the plugin sends it now.
    fn template(&self, request_id: &str) -> Value {
        json!({
            "request_id": request_id, "card_type": "OUT_MEMBER_CARD", "biz_no_suffix_len": "12",
            "write_off_type": "qrcode",
            "template_style_info": {"card_show_name": "会员卡", "logo_id": self.logo,
                "background_id": self.background, "bg_color": "rgb(55,112,179)"},
            "column_info_list": [
                {"code": "POINT", "title": "积分"}, {"code": "BALANCE", "title": "余额"},
                {"code": "LEVEL", "title": "等级"},
                {"code": "BENEFIT_INFO", "title": "会员权益", "operate_type": "openNative",
                    "more_info": {"title": "会员权益", "descs": ["金卡: 9.5折"]}},
            ],
            "field_rule_list": [
                {"field_name": "Point", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "Point"},
                {"field_name": "Balance", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "Balance"},
                {"field_name": "Level", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "Level"},
                {"field_name": "OpenDate", "rule_name": "ASSIGN_FROM_REQUEST", "rule_value": "OpenDate"},
                {"field_name": "ValidDate", "rule_name": "DATE_IN_FUTURE", "rule_value": "365d"},
            ],
            "card_level_conf": [{"level": "lv1", "level_show_name": "普通会员"}],
        })
    }

    async fn create(&self, template: &Value) -> Result<Value, Error> {
        self.call("alipay.marketing.card.template.create", template)
            .await
    }
}

#[tokio::test]
async fn the_sandbox_refuses_the_old_card_template_shapes_with_alipays_codes() {
    let m = Merchant::new("uid").await;
    let invalid = ("40002".to_owned(), "isv.invalid-parameter".to_owned());

    // Item 2: standard column codes in the case the plugin used show nothing on a real card.
    let mut t = m.template("r1");
    t["column_info_list"][0]["code"] = json!("Point");
    assert_eq!(codes(m.create(&t).await), invalid, "Point is not POINT");
    // A benefits row with a title only is an empty row.
    let mut t = m.template("r2");
    t["column_info_list"][3] = json!({"code": "BENEFIT_INFO", "title": "会员权益"});
    assert_eq!(codes(m.create(&t).await), invalid, "an empty benefits row");
    // A level column with no Level field rule shows nothing.
    let mut t = m.template("r3");
    t["field_rule_list"].as_array_mut().unwrap().remove(2);
    assert_eq!(codes(m.create(&t).await), invalid, "LEVEL without its rule");
    // No columns at all where the card needs them.
    let mut t = m.template("r4");
    t["column_info_list"] = json!([]);
    assert_eq!(
        codes(m.create(&t).await),
        ("40001".to_owned(), "isv.missing-parameter".to_owned()),
        "an empty column_info_list"
    );

    // Item 5: the deprecated write-off type, and the mini-program flow's form config.
    let mut t = m.template("r5");
    t["write_off_type"] = json!("text");
    assert_eq!(codes(m.create(&t).await), invalid, "write_off_type text");
    let mut t = m.template("r6");
    t["template_form_config"] =
        json!({"fields": {"required": ["OPEN_FORM_FIELD_MOBILE"], "optional": []}});
    assert_eq!(codes(m.create(&t).await), invalid, "template_form_config");

    // Item 4: a logo that is not square, a background that is too small.
    let odd = m
        .alipay
        .upload_image(&m.app, "png", "odd", png(600, 400))
        .await
        .unwrap();
    let mut t = m.template("r7");
    t["template_style_info"]["logo_id"] = odd["image_id"].clone();
    assert_eq!(
        codes(m.create(&t).await),
        invalid,
        "a logo that is not square"
    );
    let mut t = m.template("r8");
    t["template_style_info"]["background_id"] = json!(m.logo);
    assert_eq!(codes(m.create(&t).await), invalid, "a square background");
    // An image id the app never uploaded.
    let mut t = m.template("r9");
    t["template_style_info"]["logo_id"] = json!("https://example.com/logo.png");
    assert_eq!(codes(m.create(&t).await), invalid, "a URL as image id");

    // The shape the plugin sends now is accepted, and a card built on it shows its values.
    let created = m.create(&m.template("ok")).await.unwrap();
    assert!(created["template_id"].as_str().is_some(), "{created}");
}

/// The old upload: every parameter, the common ones included, as multipart text fields and the
/// file part without a media type.
#[tokio::test]
async fn the_sandbox_refuses_the_old_image_upload_and_accepts_the_sdks_shape() {
    let m = Merchant::new("uid").await;
    let spec = RequestSpec {
        method: "alipay.offline.material.image.upload".into(),
        extra: [
            ("image_type".to_owned(), "png".to_owned()),
            ("image_name".to_owned(), "logo.png".to_owned()),
        ]
        .into(),
        ..RequestSpec::default()
    };
    let identity = AppIdentity {
        app_id: m.app.app_id.clone(),
        sign_type: SignType::Rsa2,
        cert_sns: None,
    };
    let signed = sign_request(&m.app.private_key, &identity, &spec, chrono::Utc::now()).unwrap();
    let old_form = || {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in &signed.params {
            form = form.text(k.clone(), v.clone());
        }
        form
    };
    let send = |form: reqwest::multipart::Form, url: String| async move {
        client()
            .post(url)
            .multipart(form)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let part = reqwest::multipart::Part::bytes(png(600, 600))
        .file_name("logo.png.png")
        .mime_str("image/png")
        .unwrap();
    let answer = send(
        old_form().part("image_content", part),
        m.app.gateway_url.clone(),
    )
    .await;
    assert_eq!(
        answer["error_response"]["sub_code"], "isv.missing-app-id",
        "common parameters in the body are not read: {answer}"
    );
    // The common parameters in the query, but the file without its media type.
    let query_url = format!("{}?{}", m.app.gateway_url, signed.query_string());
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in signed.business_params() {
        form = form.text(k.clone(), v.clone());
    }
    let bare = reqwest::multipart::Part::bytes(png(600, 600)).file_name("logo.png");
    let answer = send(form.part("image_content", bare), query_url).await;
    assert_eq!(
        answer["error_response"]["sub_code"], "isv.invalid-file-extension",
        "{answer}"
    );
    // A JPEG's name on PNG bytes.
    let uploaded = m
        .alipay
        .upload_image(&m.app, "jpg", "logo", png(600, 600))
        .await;
    assert_eq!(
        codes(uploaded),
        ("40002".to_owned(), "isv.invalid-file-extension".to_owned())
    );
    // The engine's upload: the SDKs' shape.
    let uploaded = m
        .alipay
        .upload_image(&m.app, "png", "logo.png", png(600, 600))
        .await
        .unwrap();
    assert!(uploaded["image_id"].as_str().is_some(), "{uploaded}");
}

/// Each arrival's query at the merchant's callback page.
type Arrivals = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

/// A merchant's callback page: records each arrival's query.
async fn callback_site() -> (String, Arrivals) {
    let seen: Arrivals = Arc::default();
    async fn arrive(
        State(seen): State<Arrivals>,
        Query(q): Query<BTreeMap<String, String>>,
    ) -> &'static str {
        seen.lock().unwrap().push(q);
        "ok"
    }
    let router = axum::Router::new()
        .route("/cb", axum::routing::get(arrive))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, seen)
}

/// The consumer claims the card; returns the token the code buys and the claim's request id.
async fn claim(m: &Merchant, template_id: &str, consumer: &str) -> (Value, String) {
    let (callback, seen) = callback_site().await;
    let link = m
        .call(
            "alipay.marketing.card.activateurl.apply",
            &json!({"template_id": template_id, "callback": callback, "out_string": "m"}),
        )
        .await
        .unwrap();
    let opened: Value = client()
        .post(
            m.engine
                .url(&format!("/sandbox/consumers/{consumer}/open-claim-link")),
        )
        .json(&json!({"url": link["apply_card_url"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(opened["callback_status"], 200, "{opened}");
    let arrival = seen.lock().unwrap().pop().unwrap();
    let options = CallOptions {
        extra: [
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), arrival["auth_code"].clone()),
        ]
        .into(),
        ..CallOptions::default()
    };
    let token = m
        .alipay
        .call(&m.app, "alipay.system.oauth.token", None, &options)
        .await
        .unwrap();
    (token, arrival["request_id"].clone())
}

#[tokio::test]
async fn an_openid_app_opens_a_card_only_with_the_documented_user_info_and_member_fields() {
    let m = Merchant::new("openid").await;
    let template_id = m.create(&m.template("t1")).await.unwrap()["template_id"]
        .as_str()
        .unwrap()
        .to_owned();
    m.call(
        "alipay.marketing.card.formtemplate.set",
        &json!({"template_id": template_id, "fields": {
            "required": r#"{"common_fields":["OPEN_FORM_FIELD_MOBILE","OPEN_FORM_FIELD_GENDER"]}"#}}),
    )
    .await
    .unwrap();
    let (token, request_id) = claim(&m, &template_id, "olivia").await;
    // An OpenID-mode app learns an open_id and nothing else; the answer carries no code.
    let open_id = token["open_id"].as_str().unwrap().to_owned();
    assert!(token.get("user_id").is_none(), "{token}");
    assert!(token.get("code").is_none(), "{token}");
    let access = token["access_token"].as_str().unwrap().to_owned();

    // The form query: only with the request id the claim landed with; the gender in Chinese.
    let form = |request_id: &str| json!({"biz_type": "MEMBER_CARD", "template_id": template_id, "request_id": request_id});
    let wrong = m
        .call_as(
            "alipay.marketing.card.activateform.query",
            &form("123"),
            &access,
        )
        .await;
    assert_eq!(
        codes(wrong),
        ("40002".to_owned(), "isv.invalid-parameter".to_owned())
    );
    let answered = m
        .call_as(
            "alipay.marketing.card.activateform.query",
            &form(&request_id),
            &access,
        )
        .await
        .unwrap();
    assert!(
        answered["infos"].as_str().unwrap().contains("\"男\""),
        "{answered}"
    );

    let open = |user_info: Value, member: Value| {
        json!({"out_serial_no": "open1", "card_template_id": template_id,
            "card_user_info": user_info,
            "card_ext_info": {"external_card_no": "VIP0001", "point": "0", "balance": "0.00", "level": "lv1",
                "open_date": "2026-12-05 10:00:00", "valid_date": "2099-12-31 23:59:59"},
            "member_ext_info": member})
    };
    // Item 1: the old OpenID-mode user info, without its type.
    let old = m
        .call_as(
            "alipay.marketing.card.open",
            &open(json!({"open_id": open_id}), json!({})),
            &access,
        )
        .await;
    assert_eq!(
        codes(old),
        ("40001".to_owned(), "isv.missing-parameter".to_owned())
    );
    // A user id where the app is in OpenID mode.
    let uid = m
        .call_as(
            "alipay.marketing.card.open",
            &open(
                json!({"user_uni_id_type": "UID", "user_uni_id": "2088000000000001"}),
                json!({}),
            ),
            &access,
        )
        .await;
    assert_eq!(codes(uid).1, "isv.invalid-parameter");
    let user_info = json!({"user_uni_id_type": "UID", "open_id": open_id});
    // Item 3: a birthday without its year; and the form's gender as it came.
    for member in [json!({"birth": "05-20"}), json!({"gende": "男"})] {
        let refused = m
            .call_as(
                "alipay.marketing.card.open",
                &open(user_info.clone(), member.clone()),
                &access,
            )
            .await;
        assert_eq!(
            codes(refused),
            ("40002".to_owned(), "isv.invalid-parameter".to_owned()),
            "{member}"
        );
    }
    // The documented shape opens the card, and its face shows points, balance and level.
    let opened = m
        .call_as(
            "alipay.marketing.card.open",
            &open(
                user_info.clone(),
                json!({"gende": "MALE", "birth": "1990-05-20", "cell": "13800000000"}),
            ),
            &access,
        )
        .await
        .unwrap();
    let card_no = opened["card_info"]["biz_card_no"].as_str().unwrap();
    let card: Value = client()
        .get(m.engine.url(&format!("/sandbox/cards/{card_no}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown: BTreeMap<String, Value> = card["shown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["code"].as_str().unwrap().to_owned(),
                row["value"].clone(),
            )
        })
        .collect();
    assert_eq!(shown["POINT"], "0");
    assert_eq!(shown["BALANCE"], "0.00");
    assert_eq!(shown["LEVEL"], "普通会员");
    // The token served its two member-card calls; a third is refused, as at Alipay.
    let third = m
        .call_as(
            "alipay.marketing.card.activateform.query",
            &form(&request_id),
            &access,
        )
        .await;
    assert_eq!(
        codes(third),
        ("20001".to_owned(), "aop.invalid-auth-token".to_owned())
    );
}

#[tokio::test]
async fn a_uid_app_learns_only_the_user_id() {
    let m = Merchant::new("uid").await;
    let template_id = m.create(&m.template("t1")).await.unwrap()["template_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (token, _) = claim(&m, &template_id, "ulrich").await;
    assert!(
        token["user_id"].as_str().unwrap().starts_with("2088"),
        "{token}"
    );
    assert!(token.get("open_id").is_none(), "{token}");
}
