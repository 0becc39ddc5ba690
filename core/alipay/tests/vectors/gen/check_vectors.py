"""Re-checks the Node-made golden vectors with Alipay's official Python SDK (alipay-sdk-python
3.7.1411) and records each verdict beside the case. Development time only: see README.md."""
import json
import pathlib

from alipay.aop.api.util.SignatureUtils import get_sign_content, sign_with_rsa, sign_with_rsa2, verify_with_rsa

def verifies(public_key, message, sign):
    # The SDK raises on a bad signature rather than returning False.
    try:
        return bool(verify_with_rsa(public_key, message, sign))
    except Exception:
        return False


here = pathlib.Path(__file__).resolve().parent.parent
# The Python SDK wants PKCS#1 private keys without armour, public keys without armour.
bare = lambda pem: "".join(l for l in pem.splitlines() if l and not l.startswith("-----"))
app_key = bare((here / "keys/app_private_pkcs1.pem").read_text())
alipay_public = bare((here / "keys/alipay_public.pem").read_text())

requests = json.loads((here / "requests.json").read_text())
for case in requests["cases"]:
    content = get_sign_content(case["params"])
    assert content == case["sign_content"], case["name"]
    signer = sign_with_rsa2 if case["sign_type"] == "RSA2" else sign_with_rsa
    sign = signer(app_key, content, "utf-8")
    sign = sign.decode() if isinstance(sign, bytes) else sign
    case["python_sdk_sign_matches"] = sign == case["sign"]
    assert case["python_sdk_sign_matches"], case["name"]
(here / "requests.json").write_text(json.dumps(requests, indent=2, ensure_ascii=False) + "\n")

responses = json.loads((here / "responses.json").read_text())
for case in responses["cases"]:
    sign = json.loads(case["body"])["sign"]
    text = case["signed_text"]
    ok = verifies(alipay_public, text.encode(), sign)
    if not ok and "\\/" in text:
        ok = verifies(alipay_public, text.replace("\\/", "/").encode(), sign)
    case["python_sdk_verifies"] = bool(ok)
    assert case["python_sdk_verifies"] == case["expected_valid"], case["name"]
(here / "responses.json").write_text(json.dumps(responses, indent=2, ensure_ascii=False) + "\n")

notifications = json.loads((here / "notifications.json").read_text())
for case in notifications["cases"]:
    fields = dict(case["form_params"])
    sign = fields.pop("sign")
    if case["rule"] == "V1":
        fields.pop("sign_type")
    content = get_sign_content({k: v for k, v in fields.items() if v != ""})
    assert content == case["sign_content"], case["name"]
    case["python_sdk_verifies"] = verifies(alipay_public, content.encode(), sign)
    assert case["python_sdk_verifies"], case["name"]
(here / "notifications.json").write_text(json.dumps(notifications, indent=2, ensure_ascii=False) + "\n")
print("every vector re-checked with the Python SDK")
