//! The membership plugin end to end, over HTTP against the real binary and the offline Alipay
//! sandbox (which verifies every request signature): levels → card design and sync → claim
//! link → a simulated consumer opens it → Alipay's callback on the seed system's legacy path →
//! member stored and card opened → adjustments → level up → `card.update` seen by the sandbox.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use trellis_engine::alipay::client::MerchantApp;
use trellis_engine::alipay::client::{AlipayClient, CallOptions};
use trellis_engine::alipay::gateway::GatewayPolicy;
use trellis_engine::alipay::{PrivateKey, PublicKey, SignType};
use trellis_tests::{
    Api, Engine, client, create_node as node, create_partner, create_platform_admin,
    create_user as user, databases, eventually, png, register_sandbox_app,
};

const PASSWORD: &str = "correct horse battery staple";
const ROOT: &str = "root@platform.test";
const CONSOLE: &str = "127.0.0.1";
const MEMBERSHIP: &str = "com.trellis.membership";
const APP_ID: &str = "2021004199990077";
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/alipay/tests/vectors/");

const ENV: [(&str, &str); 5] = [
    ("TRELLIS_SANDBOX__ENABLED", "true"),
    ("TRELLIS_SANDBOX__TIME_SCALE", "100000"),
    ("TRELLIS_EVENTS__POLL_MS", "50"),
    ("TRELLIS_EVENTS__BACKOFF_FIRST_SECS", "1"),
    ("TRELLIS_EVENTS__LEASE_SECS", "5"),
];

struct World {
    root: Api,
    partner: String,
    agent: String,
    m1: String,
    m2: String,
    store: String,
    owner1: Api,
    owner2: Api,
    staff: Api,
    foreign_admin: Api,
    /// What the engine signs with for m1; the test uses it to play the merchant at the sandbox.
    app: MerchantApp,
}

fn mp(merchant: &str, path: &str) -> String {
    format!("/api/v1/merchants/{merchant}/plugins/{MEMBERSHIP}{path}")
}

fn sp(store: &str, path: &str) -> String {
    format!("/api/v1/stores/{store}/plugins/{MEMBERSHIP}{path}")
}

async fn world(engine: &Engine, database_url: &str, identity: &str) -> World {
    create_platform_admin(database_url, ROOT, PASSWORD);
    let root = Api::new(engine, CONSOLE).login(ROOT, PASSWORD).await;
    let partner = create_partner(&root, "P1", "p1.test").await;
    let agent = node(&root, "agents", Some(&partner), json!({"name": "A1"})).await;
    let m1 = node(&root, "merchants", Some(&agent), json!({"name": "M1"})).await;
    let m2 = node(&root, "merchants", Some(&agent), json!({"name": "M2"})).await;
    let store = node(&root, "stores", Some(&m1), json!({"name": "S1"})).await;
    let other = create_partner(&root, "P2", "p2.test").await;
    let partner_admin = user(engine, &root, &partner, "partner@p1.test", "p1.test").await;
    let agent_admin = user(engine, &root, &agent, "agent@p1.test", "p1.test").await;

    // The partner installs and offers the plugin; the agent packages it for m1 only.
    trellis_tests::install_and_assign(
        &partner_admin,
        &agent_admin,
        &partner,
        (
            "plugins/membership",
            "trellis_plugin_membership",
            MEMBERSHIP,
        ),
        json!({"name": "会员套餐", "validity_days": 365, "quotas": {"max_members": 2}}),
        &[&m1],
    )
    .await;

    // m1's Alipay app, registered at the sandbox.
    let pem = std::fs::read_to_string(format!("{VECTORS}keys/app_private_pkcs8.pem")).unwrap();
    let key = PrivateKey::parse(&SecretString::from(pem.clone())).unwrap();
    let registered = register_sandbox_app(
        engine,
        json!({"app_id": APP_ID, "app_public_key": key.public_key().to_base64(), "identity": identity}),
    )
    .await;
    let alipay_key = registered["alipay_public_key"].as_str().unwrap().to_owned();
    let gateway_url = registered["gateway_url"].as_str().unwrap().to_owned();
    let owner1 = user(engine, &root, &m1, "owner1@p1.test", "p1.test").await;
    owner1
        .put(
            &format!("/api/v1/merchants/{m1}/alipay/credentials"),
            json!({"app_id": APP_ID, "key_mode": "public_key", "app_private_key": pem,
                "alipay_public_key": alipay_key, "gateway": "custom", "gateway_url": gateway_url}),
        )
        .await
        .ok();
    let app = MerchantApp {
        merchant_id: m1.clone(),
        app_id: APP_ID.into(),
        sign_type: SignType::Rsa2,
        private_key: key,
        alipay_public_key: PublicKey::parse(&alipay_key).unwrap(),
        aes: None,
        gateway_url,
        cert_sns: None,
        alipay_cert_sn: None,
        alipay_root_cert: None,
    };
    World {
        owner2: user(engine, &root, &m2, "owner2@p1.test", "p1.test").await,
        staff: user(engine, &root, &store, "staff@p1.test", "p1.test").await,
        foreign_admin: user(engine, &root, &other, "partner@p2.test", "p2.test").await,
        root,
        partner,
        agent,
        m1,
        m2,
        store,
        owner1,
        app,
    }
}

fn levels() -> Value {
    json!({"levels": [
        {"name": "普通会员", "kind": "normal", "threshold": 0, "benefits": "积分"},
        {"name": "银卡", "kind": "normal", "threshold": 100, "discount": 98},
        {"name": "金卡", "kind": "normal", "threshold": 500, "discount": 95, "benefits": "9.5折"},
        {"id": "staff", "name": "员工卡", "kind": "locked", "experience": 300, "discount": 80},
    ]})
}

fn design(logo: &str, background: &str) -> Value {
    json!({
        "show_name": "演示会员卡", "brand_name": "演示商户", "logo_id": logo, "background_id": background,
        "bg_color": "#3770B3", "columns": ["points", "balance", "level"],
        "form": {"required": ["mobile"], "optional": ["name", "birthday_with_year"]},
        "write_off_type": "qrcode", "card_no_prefix": "VIP",
    })
}

async fn sandbox_card(engine: &Engine, biz_card_no: &str) -> Value {
    client()
        .get(engine.url(&format!("/sandbox/cards/{biz_card_no}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn open_claim_link(engine: &Engine, consumer: &str, link: &str) -> Value {
    client()
        .post(engine.url(&format!("/sandbox/consumers/{consumer}/open-claim-link")))
        .json(&json!({"url": link}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A sandbox consumer opening `url` inside Alipay: the sandbox follows the page's detour
/// through its authorisation page and answers where it landed.
async fn open_page(engine: &Engine, consumer: &str, url: &str) -> Value {
    client()
        .post(engine.url(&format!("/sandbox/consumers/{consumer}/open-page")))
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn member(api: &Api, merchant: &str, id: &str) -> Value {
    api.get(&mp(merchant, &format!("/members/{id}")))
        .await
        .ok()
        .body
}

#[tokio::test]
async fn a_merchant_runs_alipay_membership_from_levels_to_card_updates_in_a_uid_mode_app() {
    journey("uid").await;
}

/// Alipay's default for new apps: the app learns only an `open_id`, per app.
#[tokio::test]
async fn a_merchant_runs_alipay_membership_from_levels_to_card_updates_in_an_openid_mode_app() {
    journey("openid").await;
}

async fn journey(identity: &str) {
    for db in databases().await {
        let engine = Engine::start(&db.url(), &ENV);
        let w = world(&engine, &db.url(), identity).await;
        let label = db.label();
        let m1 = w.m1.as_str();

        // --- levels ------------------------------------------------------------------------
        let mut bad = levels();
        bad["levels"][2]["threshold"] = json!(100);
        let refused = w.owner1.put(&mp(m1, "/levels"), bad).await;
        assert_eq!(refused.status, 422, "{label}: {refused:?}");
        assert_eq!(refused.body["code"], "plugin_invalid_field", "{label}");
        assert_eq!(refused.body["field"], "/levels/2/threshold", "{label}");
        let stored = w.owner1.put(&mp(m1, "/levels"), levels()).await.ok();
        let ids: Vec<&str> = stored.body["levels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["lv1", "lv2", "lv3", "staff"], "{label}");
        // Staff see levels at their store's path but cannot change them anywhere.
        let seen = w.staff.get(&sp(&w.store, "/levels")).await.ok();
        assert_eq!(seen.body["levels"][1]["name"], "银卡", "{label}");
        let denied = w.staff.put(&sp(&w.store, "/levels"), levels()).await;
        assert_eq!(denied.status, 404, "{label}: {denied:?}");
        let denied = w.staff.put(&mp(m1, "/levels"), levels()).await;
        assert!(
            denied.status == 403 || denied.status == 404,
            "{label}: {denied:?}"
        );

        // --- the card: images, design, sync ------------------------------------------------
        // Images where Alipay's rules allow them: a square logo, a wide background.
        let too_small = w
            .owner1
            .upload_as(&mp(m1, "/card/images?use=logo"), png(400, 400), "image/png")
            .await;
        assert_eq!(too_small.status, 400, "{label}: {too_small:?}");
        assert_eq!(too_small.body["code"], "plugin_invalid_input", "{label}");
        let image = w
            .owner1
            .upload_as(
                &mp(m1, "/card/images?use=logo&name=logo.png"),
                png(600, 600),
                "image/png",
            )
            .await
            .ok();
        let logo = image.body["image_id"].as_str().unwrap().to_owned();
        let image = w
            .owner1
            .upload_as(
                &mp(m1, "/card/images?use=background"),
                png(1020, 643),
                "image/png",
            )
            .await
            .ok();
        let background = image.body["image_id"].as_str().unwrap().to_owned();
        let not_image = w
            .owner1
            .upload_as(
                &mp(m1, "/card/images?use=logo"),
                b"x".to_vec(),
                "text/plain",
            )
            .await;
        assert_eq!(not_image.status, 400, "{label}: {not_image:?}");
        let early = w.owner1.post(&mp(m1, "/card/sync"), json!({})).await;
        assert_eq!(
            early.status, 409,
            "{label}: nothing designed yet: {early:?}"
        );
        let mut wrong = design(&logo, &background);
        wrong["form"]["required"] = json!([]);
        let refused = w.owner1.put(&mp(m1, "/card"), wrong).await;
        assert_eq!(refused.body["field"], "/form/required", "{label}");
        w.owner1
            .put(&mp(m1, "/card"), design(&logo, &background))
            .await
            .ok();
        let synced = w.owner1.post(&mp(m1, "/card/sync"), json!({})).await.ok();
        assert_eq!(
            synced.body["sync"]["state"], "synced",
            "{label}: {synced:?}"
        );
        let template_id = synced.body["template_id"].as_str().unwrap().to_owned();
        // A changed design is stale until synced again, which modifies the same template.
        let mut slogan = design(&logo, &background);
        slogan["slogan"] = json!("欢迎光临");
        let changed = w.owner1.put(&mp(m1, "/card"), slogan).await.ok();
        assert_eq!(changed.body["sync"]["state"], "stale", "{label}");
        let again = w.owner1.post(&mp(m1, "/card/sync"), json!({})).await.ok();
        assert_eq!(again.body["template_id"], template_id.as_str(), "{label}");
        assert_eq!(again.body["sync"]["state"], "synced", "{label}");

        // --- the claim link ----------------------------------------------------------------
        let claim = w
            .owner1
            .post(&mp(m1, "/claim-link"), json!({"callback": "legacy"}))
            .await
            .ok();
        let link = claim.body["claim"]["url"].as_str().unwrap().to_owned();
        assert!(
            link.contains("/sandbox/activecard?"),
            "{label}: decoded: {link}"
        );
        assert_eq!(
            claim.body["claim"]["callback"],
            "https://p1.test/index.php/wxapi/Al/auth/membercode/notify",
            "{label}: on the partner's domain"
        );
        assert!(claim.body["qr_svg"].as_str().unwrap().contains("<svg"));
        let qr = w.staff.get(&sp(&w.store, "/claim-link/qr.svg")).await;
        assert_eq!(qr.status, 200, "{label}");
        assert_eq!(qr.headers["content-type"], "image/svg+xml", "{label}");

        // --- a consumer claims the card: the callback arrives on the legacy path -----------
        let opened = open_claim_link(&engine, "alice", &link).await;
        assert_eq!(opened["callback_status"], 200, "{label}: {opened}");
        let page = opened["callback_body"].as_str().unwrap();
        assert!(page.contains("开卡成功"), "{label}: {page}");
        assert!(
            page.contains("演示会员卡"),
            "{label}: the page shows the card"
        );
        let list = w.owner1.get(&mp(m1, "/members")).await.ok();
        assert_eq!(list.body["items"].as_array().unwrap().len(), 1, "{label}");
        let alice = list.body["items"][0].clone();
        let id = alice["id"].as_str().unwrap().to_owned();
        let biz_card_no = alice["biz_card_no"].as_str().unwrap().to_owned();
        assert_eq!(alice["level"], "lv1", "{label}");
        assert_eq!(alice["level_name"], "普通会员", "{label}");
        assert!(
            alice["external_card_no"]
                .as_str()
                .unwrap()
                .starts_with("VIP")
        );
        // The app learns only the identifier its mode gives it.
        if identity == "uid" {
            assert!(alice["user_id"].as_str().unwrap().starts_with("2088"));
            assert!(alice["open_id"].is_null(), "{label}: {alice}");
        } else {
            assert!(alice["open_id"].as_str().unwrap().starts_with("074"));
            assert!(alice["user_id"].is_null(), "{label}: {alice}");
        }
        let mobile = alice["mobile"].as_str().unwrap().to_owned();
        assert!(mobile.starts_with("138"), "{label}: {alice}");

        // --- her own page, opened from the card in Alipay -----------------------------------
        // The engine sends her through Alipay's silent authorisation for m1's app first.
        let home = format!("http://p1.test/m/{m1}/{MEMBERSHIP}/me");
        let card_no = alice["external_card_no"].as_str().unwrap().to_owned();
        let opened = open_page(&engine, "alice", &home).await;
        assert_eq!(opened["status"], 200, "{label}: {opened}");
        let page = opened["body"].as_str().unwrap();
        assert!(
            page.contains("普通会员") && page.contains(&card_no) && page.contains("积分"),
            "{label}: {page}"
        );
        // Another consumer sees no one's card but the way to get one.
        let other = open_page(&engine, "dave", &home).await;
        let page = other["body"].as_str().unwrap();
        assert!(page.contains("您还不是本店会员"), "{label}: {page}");
        assert!(!page.contains(&card_no), "{label}: {page}");
        // Without Alipay, a forged buyer header only earns the detour to Alipay.
        let forged = client()
            .get(engine.url(&format!("/m/{m1}/{MEMBERSHIP}/me")))
            .header("host", "p1.test")
            .header("x-trellis-alipay-user-id", "2088000000000001")
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 302, "{label}");
        let to = forged.headers()["location"].to_str().unwrap();
        assert!(
            to.contains("/sandbox/oauth2/publicAppAuthorize.htm?app_id=")
                && to.contains("scope=auth_base"),
            "{label}: {to}"
        );
        let kept = forged.headers()["set-cookie"].to_str().unwrap();
        assert!(
            kept.starts_with("trellis_member_state=")
                && kept.contains(&format!("Path=/m/{m1}/{MEMBERSHIP};"))
                && kept.contains("HttpOnly"),
            "{label}: {kept}"
        );
        // A code brought to a browser that was not sent for it shows nothing.
        let stray = client()
            .get(engine.url(&format!("/m/{m1}/{MEMBERSHIP}/me?auth_code=abc&state=one")))
            .header("host", "p1.test")
            .header("cookie", "trellis_member_state=two")
            .send()
            .await
            .unwrap();
        assert_eq!(stray.status(), 400, "{label}");
        // Not on another partner's domain.
        let elsewhere = client()
            .get(engine.url(&format!("/m/{m1}/{MEMBERSHIP}/me")))
            .header("host", "p2.test")
            .send()
            .await
            .unwrap();
        assert_eq!(elsewhere.status(), 404, "{label}");

        // Another plugin of the partner finds her by the buyer id of her payments, and the claim
        // link for buyers who are not members yet (host-api 0.2 plugin calls).
        trellis_tests::fixtures::entitle(
            &w.root,
            (&w.partner, &w.agent),
            &[m1],
            (
                "tests/plugins/neighbours",
                "trellis_fixture_neighbours",
                "test.trellis.caller",
            ),
        )
        .await;
        let caller =
            |path: &str| format!("/api/v1/merchants/{m1}/plugins/test.trellis.caller{path}");
        let buyer = alice["user_id"]
            .as_str()
            .or(alice["open_id"].as_str())
            .unwrap()
            .to_owned();
        let found = w
            .root
            .get(&caller(&format!("/ask/member/{buyer}")))
            .await
            .ok()
            .body;
        assert_eq!(found["status"], 200, "{label}: {found}");
        assert_eq!(
            found["body"]["member"]["id"],
            id.as_str(),
            "{label}: {found}"
        );
        let stranger = w
            .root
            .get(&caller("/ask/member/2088000000009999"))
            .await
            .ok()
            .body;
        assert!(
            stranger["error"]
                .as_str()
                .is_some_and(|e| e.contains("NotFound")),
            "{label}: {stranger}"
        );
        let claim = w.root.get(&caller("/ask/claim")).await.ok().body;
        assert_eq!(claim["body"]["url"], link.as_str(), "{label}: {claim}");
        // People do not reach the plugin routes.
        let direct = w
            .owner1
            .get(&mp(m1, &format!("/members/by-buyer/{buyer}")))
            .await;
        assert_eq!(direct.status, 404, "{label}: {direct:?}");
        let at_alipay = sandbox_card(&engine, &biz_card_no).await;
        assert_eq!(at_alipay["external_card_no"], alice["external_card_no"]);
        assert_eq!(at_alipay["level"], "lv1", "{label}");
        // The card's face shows points, balance and level, filled from the card.
        let shown = |code: &str| {
            at_alipay["shown"]
                .as_array()
                .unwrap()
                .iter()
                .find(|row| row["code"] == code)
                .map(|row| row["value"].clone())
                .unwrap_or_else(|| panic!("{label}: no {code} row in {at_alipay}"))
        };
        assert_eq!(shown("POINT"), "0", "{label}");
        assert_eq!(shown("BALANCE"), "0.00", "{label}");
        assert_eq!(shown("LEVEL"), "普通会员", "{label}");
        assert!(
            biz_card_no.len() == 12 && biz_card_no.bytes().all(|b| b.is_ascii_digit()),
            "{label}: the number follows the template's suffix length: {biz_card_no}"
        );

        // The same consumer again, through the clean path: no second member or card.
        let clean_link = link.replace(
            "%2Findex.php%2Fwxapi%2FAl%2Fauth%2Fmembercode%2Fnotify",
            "%2Fcallbacks%2Falipay%2Fcard-activation",
        );
        assert_ne!(
            clean_link, link,
            "{label}: the callback is encoded in the link"
        );
        let twice = open_claim_link(&engine, "alice", &clean_link).await;
        assert_eq!(twice["callback_status"], 200, "{label}: {twice}");
        assert!(
            twice["callback_body"]
                .as_str()
                .unwrap()
                .contains("已是会员"),
            "{label}: {twice}"
        );
        let list = w.owner1.get(&mp(m1, "/members")).await.ok();
        assert_eq!(list.body["items"].as_array().unwrap().len(), 1, "{label}");
        assert_eq!(list.body["total"], 1, "{label}");
        let bob = open_claim_link(&engine, "bob", &link).await;
        assert_eq!(bob["callback_status"], 200, "{label}: {bob}");
        // The package allows two members.
        let carol = open_claim_link(&engine, "carol", &link).await;
        assert_eq!(carol["callback_status"], 403, "{label}: {carol}");
        assert!(
            carol["callback_body"]
                .as_str()
                .unwrap()
                .contains("名额已满"),
            "{label}: {carol}"
        );
        let imported = w
            .owner1
            .post(
                &mp(m1, "/members/import"),
                json!({"members": [{"mobile": "13900000001", "name": "导入"}]}),
            )
            .await
            .ok();
        assert_eq!(
            imported.body["skipped"][0]["reason"], "member quota reached",
            "{label}: {imported:?}"
        );

        // --- search ------------------------------------------------------------------------
        let found = w
            .staff
            .get(&sp(&w.store, &format!("/members?q={}", &mobile[..7])))
            .await
            .ok();
        let hits: Vec<&str> = found.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(hits.contains(&id.as_str()), "{label}: {found:?}");
        let by_card = w
            .owner1
            .get(&mp(
                m1,
                &format!(
                    "/members?by=card&q={}",
                    alice["external_card_no"].as_str().unwrap()
                ),
            ))
            .await
            .ok();
        assert_eq!(by_card.body["items"][0]["id"], id.as_str(), "{label}");
        let by_level = w.owner1.get(&mp(m1, "/members?by=level&q=lv1")).await.ok();
        assert_eq!(
            by_level.body["items"].as_array().unwrap().len(),
            2,
            "{label}"
        );

        // --- adjustments: staff view, owners adjust ----------------------------------------
        let adjust =
            json!({"experience": 150, "points": 120, "reason": "开业赠送", "request_id": "open-1"});
        let denied = w
            .staff
            .post(
                &sp(&w.store, &format!("/members/{id}/adjustments")),
                adjust.clone(),
            )
            .await;
        assert_eq!(
            denied.status, 404,
            "{label}: staff cannot adjust: {denied:?}"
        );
        let done = w
            .owner1
            .post(
                &mp(m1, &format!("/members/{id}/adjustments")),
                adjust.clone(),
            )
            .await
            .ok();
        assert_eq!(done.body["applied"], true, "{label}");
        assert_eq!(
            done.body["member"]["level"], "lv2",
            "{label}: level up to 银卡"
        );
        assert_eq!(done.body["member"]["points"], 120, "{label}");
        assert_eq!(
            done.body["member"]["card_sync"]["state"], "synced",
            "{label}"
        );
        let replay = w
            .owner1
            .post(&mp(m1, &format!("/members/{id}/adjustments")), adjust)
            .await
            .ok();
        assert_eq!(replay.body["applied"], false, "{label}: same request id");
        assert_eq!(
            replay.body["member"]["points"], 120,
            "{label}: not credited twice"
        );
        let at_alipay = sandbox_card(&engine, &biz_card_no).await;
        assert_eq!(at_alipay["level"], "lv2", "{label}: {at_alipay}");
        assert_eq!(at_alipay["point"], "120", "{label}");
        let overdraw = w
            .owner1
            .post(
                &mp(m1, &format!("/members/{id}/adjustments")),
                json!({"points": -1000, "reason": "兑换"}),
            )
            .await;
        assert_eq!(overdraw.status, 409, "{label}: {overdraw:?}");

        let gold = w
            .owner1
            .post(
                &mp(m1, &format!("/members/{id}/adjustments")),
                json!({"experience": 400, "points": 30, "balance": 1050, "reason": "消费"}),
            )
            .await
            .ok();
        assert_eq!(gold.body["member"]["level"], "lv3", "{label}: 金卡 at 550");
        let at_alipay = sandbox_card(&engine, &biz_card_no).await;
        assert_eq!(at_alipay["level"], "lv3", "{label}");
        assert_eq!(at_alipay["point"], "150", "{label}");
        assert_eq!(at_alipay["balance"], "10.50", "{label}");

        // A locked level is granted at its fixed experience and survives recomputation.
        let locked = w
            .owner1
            .post(
                &mp(m1, &format!("/members/{id}/adjustments")),
                json!({"grant_level": "staff", "reason": "员工"}),
            )
            .await
            .ok();
        assert_eq!(locked.body["member"]["level"], "staff", "{label}");
        assert_eq!(locked.body["member"]["experience"], 300, "{label}");
        let more = w
            .owner1
            .post(
                &mp(m1, &format!("/members/{id}/adjustments")),
                json!({"experience": 1000, "reason": "消费"}),
            )
            .await
            .ok();
        assert_eq!(more.body["member"]["level"], "staff", "{label}: locked");
        let recomputed = w.owner1.post(&mp(m1, "/recompute"), json!({})).await.ok();
        assert_eq!(recomputed.body["changed"], 0, "{label}");
        assert_eq!(member(&w.owner1, m1, &id).await["member"]["level"], "staff");

        // The ledger, newest first.
        let detail = w
            .staff
            .get(&sp(&w.store, &format!("/members/{id}")))
            .await
            .ok()
            .body;
        let reasons: Vec<&str> = detail["ledger"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons, ["消费", "员工", "消费", "开业赠送"], "{label}");

        // --- member.adjust from another plugin, idempotent on its request id --------------
        for _ in 0..2 {
            w.root
                .post(
                    &format!("/api/v1/merchants/{m1}/events"),
                    json!({"kind": "member.adjust", "payload": {"request_id": "rule-42", "member_id": id, "points": 5, "reason": "消费返积分"}}),
                )
                .await
                .ok();
        }
        let owner = w.owner1.clone();
        let (m1_owned, id_owned) = (m1.to_owned(), id.clone());
        eventually(Duration::from_secs(30), "member.adjust credited", || {
            let (owner, m1, id) = (owner.clone(), m1_owned.clone(), id_owned.clone());
            async move {
                let points = member(&owner, &m1, &id).await["member"]["points"].clone();
                if points == 155 {
                    Ok(())
                } else {
                    Err(format!("points {points}"))
                }
            }
        })
        .await;
        let engine_card = engine.url(&format!("/sandbox/cards/{biz_card_no}"));
        eventually(Duration::from_secs(10), "card shows 155", || {
            let url = engine_card.clone();
            async move {
                let card: Value = client()
                    .get(url)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if card["point"] == "155" {
                    Ok(())
                } else {
                    Err(card.to_string())
                }
            }
        })
        .await;
        // Both events delivered; the second credited nothing.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(member(&w.owner1, m1, &id).await["member"]["points"], 155);

        // --- a failed card.update is visible and retried -----------------------------------
        let alipay = AlipayClient::with_policy(
            GatewayPolicy::local_sandbox(),
            Duration::from_secs(5),
            Duration::from_secs(20),
        )
        .unwrap();
        alipay
            .call(
                &w.app,
                "alipay.marketing.card.delete",
                Some(&json!({"target_card_no": biz_card_no, "target_card_no_type": "BIZ_CARD", "out_serial_no": "del-1", "reason_code": "USER_UNBUND"})),
                &CallOptions::default(),
            )
            .await
            .unwrap();
        let failed = w
            .owner1
            .post(
                &mp(m1, &format!("/members/{id}/adjustments")),
                json!({"points": 1, "reason": "测试"}),
            )
            .await
            .ok();
        assert_eq!(
            failed.body["applied"], true,
            "{label}: the change itself stands"
        );
        let sync = &failed.body["member"]["card_sync"];
        assert_eq!(sync["state"], "failed", "{label}: {sync}");
        assert_eq!(sync["sub_code"], "CARD_NOT_EXIST", "{label}");
        let failing = w.owner1.get(&mp(m1, "/members?by=sync_failing")).await.ok();
        assert_eq!(failing.body["items"][0]["id"], id.as_str(), "{label}");
        let owner = w.owner1.clone();
        let m1_owned = m1.to_owned();
        eventually(
            Duration::from_secs(30),
            "the retry is in the delivery log",
            || {
                let (owner, m1) = (owner.clone(), m1_owned.clone());
                async move {
                    let log = owner
                        .get(&format!("/api/v1/deliveries?merchant_id={m1}&per_page=200"))
                        .await
                        .ok();
                    let retried = log.body["items"].as_array().unwrap().iter().any(|d| {
                        d["kind"] == "membership.card_sync"
                            && d["attempts"].as_i64().unwrap_or(0) >= 1
                    });
                    if retried {
                        Ok(())
                    } else {
                        Err(log.body.to_string())
                    }
                }
            },
        )
        .await;

        // --- isolation ---------------------------------------------------------------------
        let not_entitled = w.owner2.get(&mp(&w.m2, "/members")).await;
        assert_eq!(not_entitled.status, 403, "{label}: {not_entitled:?}");
        assert_eq!(not_entitled.body["code"], "not_entitled", "{label}");
        let page = client()
            .get(engine.url(&format!("/m/{}/{MEMBERSHIP}/activate", w.m2)))
            .header("host", "p1.test")
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 403, "{label}: m2's member page");
        let foreign = w.owner2.get(&mp(m1, "/members")).await;
        assert_eq!(foreign.status, 404, "{label}: another merchant's members");
        let foreign = w.foreign_admin.get(&mp(m1, "/members")).await;
        assert_eq!(foreign.status, 404, "{label}: another partner");
        let other_domain = client()
            .get(engine.url(&format!(
                "/index.php/wxapi/Al/auth/membercode/notify?app_id={APP_ID}&auth_code=x&request_id=1"
            )))
            .header("host", "p2.test")
            .send()
            .await
            .unwrap();
        assert_eq!(
            other_domain.status(),
            404,
            "{label}: callbacks stay on the partner's domain"
        );

        drop(engine);
        db.cleanup().await;
    }
}

/// A bulk import creates each mobile once: a number already a member's, or repeated within the
/// batch, is skipped with its reason, as is an invalid row, and the rest are created in order.
#[tokio::test]
async fn an_import_skips_mobiles_already_members_or_repeated_in_the_batch() {
    for db in databases().await {
        let label = db.label();
        let engine = Engine::start(&db.url(), &ENV);
        let branch = trellis_tests::fixtures::branch(&engine, &db.url(), "p.test").await;
        trellis_tests::fixtures::entitle(
            &branch.root,
            (&branch.partner, &branch.agent),
            &[&branch.merchant],
            (
                "plugins/membership",
                "trellis_plugin_membership",
                MEMBERSHIP,
            ),
        )
        .await;
        let import = mp(&branch.merchant, "/members/import");
        let first = branch
            .root
            .post(
                &import,
                json!({"members": [
                    {"mobile": "13900000001", "name": "甲"},
                    {"mobile": "13900000001", "name": "甲again"},
                    {"mobile": "not a number"},
                    {"mobile": "13900000002", "points": 5},
                ]}),
            )
            .await
            .ok();
        assert_eq!(
            first.body["created"].as_array().unwrap().len(),
            2,
            "{label}: {first:?}"
        );
        let reasons: Vec<(u64, &str)> = first.body["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["index"].as_u64().unwrap(), s["reason"].as_str().unwrap()))
            .collect();
        assert_eq!(reasons[0], (1, "duplicate mobile"), "{label}: {reasons:?}");
        assert_eq!(reasons[1].0, 2, "{label}: {reasons:?}");
        assert_eq!(reasons.len(), 2, "{label}: {reasons:?}");
        let second = branch
            .root
            .post(
                &import,
                json!({"members": [{"mobile": "13900000002"}, {"mobile": "13900000003"}]}),
            )
            .await
            .ok();
        assert_eq!(
            second.body["skipped"][0]["reason"], "duplicate mobile",
            "{label}"
        );
        assert_eq!(
            second.body["created"].as_array().unwrap().len(),
            1,
            "{label}"
        );
        let list = branch
            .root
            .get(&mp(&branch.merchant, "/members"))
            .await
            .ok();
        assert_eq!(list.body["total"], 3, "{label}: {list:?}");
        let ids: Vec<&str> = list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mobile"].as_str().unwrap())
            .collect();
        for mobile in ["13900000001", "13900000002", "13900000003"] {
            assert!(ids.contains(&mobile), "{label}: {ids:?}");
        }
    }
}
