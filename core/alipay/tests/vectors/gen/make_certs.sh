#!/usr/bin/env bash
# Test-only certificate chain: a root CA (sha256WithRSA), an "Alipay public key" certificate and an
# "app public key" certificate signed by it, plus a root bundle mixing an ECDSA root (excluded from
# alipay_root_cert_sn) with the RSA one. Mirrors the shape of Alipay's real files.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p certs && cd certs
subj_root="/C=CN/O=Trellis Test/OU=Certification Authority/CN=Trellis Test Root R1"
openssl req -x509 -newkey rsa:2048 -nodes -keyout root_key.pem -out root_rsa.pem -days 7300 -subj "$subj_root" -sha256 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-384 -nodes -keyout root_ec_key.pem -out root_ec.pem -days 7300 \
  -subj "/C=CN/O=Trellis Test/OU=Certification Authority/CN=Trellis Test Root E1" -sha384 2>/dev/null
cat root_ec.pem root_rsa.pem > root_bundle.pem
for who in alipay app; do
  openssl req -new -key ../keys/${who}_private_pkcs8.pem -out ${who}.csr -subj "/C=CN/O=Trellis Test/OU=Alipay/CN=${who} 2021004100000001" 2>/dev/null
  openssl x509 -req -in ${who}.csr -CA root_rsa.pem -CAkey root_key.pem -set_serial 0x$(openssl rand -hex 12) -days 3650 -sha256 -out ${who}_cert.pem 2>/dev/null
  rm ${who}.csr
done
# A certificate for the same key signed by a stranger: must not be trusted.
openssl req -x509 -newkey rsa:2048 -nodes -keyout stranger_key.pem -out stranger_root.pem -days 3650 -subj "$subj_root" -sha256 2>/dev/null
openssl req -new -key ../keys/alipay_private_pkcs8.pem -out forged.csr -subj "/C=CN/O=Trellis Test/OU=Alipay/CN=alipay 2021004100000001" 2>/dev/null
openssl x509 -req -in forged.csr -CA stranger_root.pem -CAkey stranger_key.pem -set_serial 0x0badc0ffee -days 3650 -sha256 -out forged_alipay_cert.pem 2>/dev/null
rm forged.csr root_key.pem root_ec_key.pem stranger_key.pem stranger_root.pem
