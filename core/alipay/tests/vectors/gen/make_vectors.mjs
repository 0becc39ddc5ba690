// Writes the golden vectors with Alipay's official Node SDK (alipay-sdk@4.14.0).
// Development time only: see README.md. Every signature here is made or checked by the SDK.
import { readFileSync, writeFileSync } from 'node:fs';
import { createSign } from 'node:crypto';
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
// The package exports only its entry point; its util and antcertutil modules sit beside it.
const sdkMain = require.resolve('alipay-sdk');
const sdkDir = sdkMain.slice(0, sdkMain.lastIndexOf('/') + 1);
const util = require(sdkDir + 'util.js');
const certutil = require(sdkDir + 'antcertutil.js');
const { AlipaySdk } = require('alipay-sdk');

const dir = new URL('..', import.meta.url).pathname;
const read = (p) => readFileSync(dir + p, 'utf8');
const appKeyPkcs1 = read('keys/app_private_pkcs1.pem');
const appKeyPkcs8 = read('keys/app_private_pkcs8.pem');
const appPublic = read('keys/app_public.pem');
const alipayKeyPkcs1 = read('keys/alipay_private_pkcs1.pem');
const alipayPublic = read('keys/alipay_public.pem');
const AES_KEY = 'aoMq5bkLjvVvtI5CPhxUIg=='; // test-only AES key
const bare = (pem) => pem.split('\n').filter((l) => l && !l.startsWith('-----')).join('');

function config(signType, extra = {}) {
  return {
    appId: '2021004100000001', privateKey: appKeyPkcs1, signType, charset: 'utf-8', version: '1.0',
    keyType: 'PKCS1', encryptKey: AES_KEY, ...extra,
  };
}
const signString = (p) => Object.keys(p).filter((k) => k !== 'sign').sort().map((k) => `${k}=${p[k]}`).join('&');

// ---- requests: signed by the SDK's own sign() ----
const bizCreate = {
  request_id: '20240520103000000001', card_type: 'OUT_MEMBER_CARD', biz_no_prefix: 'VIP', biz_no_suffix_len: '12',
  write_off_type: 'qrcode',
  template_style_info: { card_show_name: '星巴克会员卡', logo_id: 'lg1', background_id: 'bg1', bg_color: 'rgb(55,112,179)' },
  column_info_list: [{ code: 'Point', title: '积分', operate_type: 'openWeb', more_info: { url: 'https://m.example.com/a?b=1&c=2' } }],
};
const requests = [];
const requestCases = [
  ['template_create_rsa2', 'alipay.marketing.card.template.create', 'RSA2', {},
    { bizContent: bizCreate, appAuthToken: '202405BB7f3c00000000000000000001', notifyUrl: 'https://pay.example.com/alipay/notify/t1/m9/card' }],
  ['oauth_token_top_level_params', 'alipay.system.oauth.token', 'RSA2', {},
    { grantType: 'authorization_code', code: '7f3d5f1b0c2a4e51b8e8f5c3d2a1b0c9' }],
  ['trade_query_legacy_rsa', 'alipay.trade.query', 'RSA', {}, { bizContent: { out_trade_no: 'T20240520-0001' } }],
  ['card_open_cert_mode', 'alipay.marketing.card.open', 'RSA2',
    { appCertSn: '866efef280dec9137a87d047ac446315', alipayRootCertSn: '687b59193f3f462dd5336e5abf83c5d8_02941eef3187dddf3d3b83462e1dfcf6' },
    { bizContent: { out_serial_no: 'S1', card_template_id: 'T1', card_user_info: { user_uni_id: '2088000000000001', user_uni_id_type: 'UID' } }, authToken: 'authusrB1234' }],
  ['activateform_query_aes', 'alipay.marketing.card.activateform.query', 'RSA2', {},
    { bizContent: { biz_type: 'MEMBER_CARD', template_id: 'T1', request_id: 'R1' }, needEncrypt: true }],
];
for (const [name, method, signType, extra, params] of requestCases) {
  const cfg = config(signType, extra);
  const signed = util.sign(method, params, cfg);
  const { sign, ...unsigned } = signed;
  // The same params signed from the PKCS#8 form of the key must give the same bytes.
  const again = createSign(util.ALIPAY_ALGORITHM_MAPPING[signType]).update(signString(unsigned), 'utf8').sign(appKeyPkcs8, 'base64');
  if (again !== sign) throw new Error(`${name}: PKCS#1 and PKCS#8 signatures differ`);
  requests.push({ name, sign_type: signType, params: unsigned, sign_content: signString(unsigned), sign });
}

// ---- responses: node text signed with the "Alipay" key; verified by the SDK ----
const alipaySdk = new AlipaySdk({ appId: '2021004100000001', privateKey: appKeyPkcs1, alipayPublicKey: bare(alipayPublic), keyType: 'PKCS1' });
const signAs = (text, signType = 'RSA2') => createSign(util.ALIPAY_ALGORITHM_MAPPING[signType]).update(text, 'utf8').sign(alipayKeyPkcs1, 'base64');
const responses = [];
const plainNode = '{"code":"10000","msg":"Success","template_id":"20240520000000000000000000000001"}';
responses.push({ name: 'plain', method: 'alipay.marketing.card.template.create', sign_type: 'RSA2',
  body: `{"alipay_marketing_card_template_create_response":${plainNode},"sign":"${signAs(plainNode)}"}`, signed_text: plainNode, expected_valid: true });
const nested = '{"code":"10000","msg":"Success","card_info":{"biz_card_no":"VIP000000000001","external_card_no":"E1","open_date":"2024-05-20 10:30:00","level":"金卡","point":"100"},"schema_url":"alipays:\\/\\/platformapi\\/startapp?appId=20000021&p={\\"a\\":\\"}\\"}"}';
responses.push({ name: 'nested_with_escapes', method: 'alipay.marketing.card.query', sign_type: 'RSA2',
  body: `{"alipay_marketing_card_query_response":${nested},"sign":"${signAs(nested)}"}`, signed_text: nested, expected_valid: true });
const slashPlain = '{"code":"10000","msg":"Success","qr_code":"https://qr.alipay.com/bax00001"}';
const slashSent = slashPlain.replaceAll('/', '\\/');
responses.push({ name: 'escaped_slash_signed_unescaped', method: 'alipay.trade.precreate', sign_type: 'RSA2',
  body: `{"alipay_trade_precreate_response":${slashSent},"sign":"${signAs(slashPlain)}"}`, signed_text: slashSent, expected_valid: true });
const certNode = '{"code":"10000","msg":"Success","trade_status":"TRADE_SUCCESS","total_amount":"0.10"}';
responses.push({ name: 'cert_mode_sibling', method: 'alipay.trade.query', sign_type: 'RSA2',
  body: `{"alipay_trade_query_response":${certNode},"alipay_cert_sn":"7513daaaa48aa3ba2e4018d84402479c","sign":"${signAs(certNode)}"}`, signed_text: certNode, expected_valid: true });
const cipher = util.aesEncryptText('{"code":"10000","msg":"Success","infos":"[{\\"OPEN_FORM_FIELD_MOBILE\\":\\"13552319194\\"}]"}', AES_KEY);
responses.push({ name: 'aes_string_node', method: 'alipay.marketing.card.activateform.query', sign_type: 'RSA2',
  body: `{"alipay_marketing_card_activateform_query_response":"${cipher}","sign":"${signAs('"' + cipher + '"')}"}`, signed_text: `"${cipher}"`, expected_valid: true });
responses.push({ name: 'legacy_rsa', method: 'alipay.trade.query', sign_type: 'RSA',
  body: `{"alipay_trade_query_response":${certNode},"sign":"${signAs(certNode, 'RSA')}"}`, signed_text: certNode, expected_valid: true });
responses.push({ name: 'tampered', method: 'alipay.trade.query', sign_type: 'RSA2',
  body: `{"alipay_trade_query_response":${certNode.replace('0.10', '9.99')},"sign":"${signAs(certNode)}"}`, signed_text: certNode.replace('0.10', '9.99'), expected_valid: false });
const nodeCrypto = require('node:crypto');
const alipayKeyObject = nodeCrypto.createPublicKey(alipayPublic);
const rsdk = (signType) => new AlipaySdk({ appId: '2021004100000001', privateKey: appKeyPkcs1, alipayPublicKey: bare(alipayPublic), keyType: 'PKCS1', signType });
for (const r of responses) {
  const sign = JSON.parse(r.body).sign;
  // The SDK's verification primitive over the exact node text (then the `\/` fallback).
  const verify = (text) => nodeCrypto.createVerify(util.ALIPAY_ALGORITHM_MAPPING[r.sign_type]).update(text, 'utf8').verify(alipayKeyObject, sign, 'base64');
  const official = verify(r.signed_text) || (r.signed_text.includes('\\/') && verify(r.signed_text.replaceAll('\\/', '/')));
  if (official !== r.expected_valid) throw new Error(`${r.name}: expected ${r.expected_valid}`);
  // What the SDK's own checkResponseSign (with its heuristic getSignStr) says, for the record.
  try {
    rsdk(r.sign_type).checkResponseSign(r.body, r.method.replaceAll('.', '_') + '_response', sign, 't');
    r.node_sdk_checkResponseSign = true;
  } catch {
    r.node_sdk_checkResponseSign = false;
  }
}

// ---- notifications: signed over the V1/V2 strings; checked by the SDK's own checkNotifySignV2 ----
const notifications = [];
function notification(name, fields, rule, signType = 'RSA2') {
  const withType = { ...fields, sign_type: signType };
  const content = Object.keys(withType).filter((k) => k !== 'sign' && (rule === 'V2' || k !== 'sign_type') && withType[k] !== '')
    .sort().map((k) => `${k}=${withType[k]}`).join('&');
  const signed = { ...withType, sign: signAs(content, signType) };
  const sdk = alipaySdk.checkNotifySignV2({ ...signed });
  notifications.push({ name, rule, form_params: signed, sign_content: content, expected_valid: true, node_sdk_checkNotifySignV2: sdk });
}
notification('trade_status_sync', { notify_type: 'trade_status_sync', notify_id: 'n1', notify_time: '2024-05-20 10:31:00', app_id: '2021004100000001',
  trade_no: '2024052022001400001', out_trade_no: 'T20240520-0001', trade_status: 'TRADE_SUCCESS', total_amount: '0.10',
  fund_bill_list: '[{"amount":"0.10","fundChannel":"ALIPAYACCOUNT"}]', passback_params: 'tenant%3Dt1%26merchant%3Dm9', subject: '会员充值', version: '1.0', charset: 'utf-8' }, 'V1');
notification('gateway_message_v2', { notify_type: 'servicemarket_order_notify', notify_id: 'n2', app_id: '2021004100000001', commodity_order_id: '20240520000001', version: '1.0', charset: 'utf-8' }, 'V2');
notification('trade_legacy_rsa', { notify_type: 'trade_status_sync', notify_id: 'n3', app_id: '2021004100000001', trade_no: '1', out_trade_no: 'T2', trade_status: 'TRADE_FINISHED', total_amount: '1.00', version: '1.0', charset: 'utf-8' }, 'V1', 'RSA');

// ---- AES ----
const aes = [];
for (const plain of ['{"biz_type":"MEMBER_CARD","template_id":"T1","request_id":"R1"}', '0123456789abcdef', '{"名字":"张三","mobile":"13552319194"}', '']) {
  const c = util.aesEncryptText(plain, AES_KEY);
  if (util.aesDecryptText(c, AES_KEY) !== plain) throw new Error('AES round trip');
  aes.push({ key: AES_KEY, plaintext: plain, ciphertext: c });
}

// ---- certificate SNs: the SDK's getSN on the test chain ----
const certs = {
  app_cert_sn: certutil.getSN(read('certs/app_cert.pem')),
  alipay_cert_sn: certutil.getSN(read('certs/alipay_cert.pem')),
  root_cert_sn: certutil.getSN(read('certs/root_bundle.pem'), true),
  rsa_root_only_sn: certutil.getSN(read('certs/root_rsa.pem')),
};

const provenance = 'Generated by core/alipay/tests/vectors/gen/make_vectors.mjs with alipay-sdk@4.14.0 (Node ' + process.version + ') using the labelled test keys in keys/.';
writeFileSync(dir + 'requests.json', JSON.stringify({ provenance, app_public_key: bare(appPublic), cases: requests }, null, 2) + '\n');
writeFileSync(dir + 'responses.json', JSON.stringify({ provenance, alipay_public_key: bare(alipayPublic), cases: responses }, null, 2) + '\n');
writeFileSync(dir + 'notifications.json', JSON.stringify({ provenance, alipay_public_key: bare(alipayPublic), cases: notifications }, null, 2) + '\n');
writeFileSync(dir + 'aes.json', JSON.stringify({ provenance, cases: aes }, null, 2) + '\n');
writeFileSync(dir + 'certs.json', JSON.stringify({ provenance, ...certs }, null, 2) + '\n');
console.log(`wrote ${requests.length} requests, ${responses.length} responses, ${notifications.length} notifications, ${aes.length} AES, certs`);
