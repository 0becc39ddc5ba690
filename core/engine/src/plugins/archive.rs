//! `.tplug` archives: a gzip'd tar of `manifest.json`, `plugin.wasm`, `templates/…`,
//! `assets/…`, `SHA256SUMS` (one line per other file) and optionally `SIGNATURE` (an Ed25519
//! signature over `SHA256SUMS` with the publisher's public key).
//!
//! Invariant: [`Archive::read`] returns only archives whose every member is a regular file at a
//! safe relative path, listed in `SHA256SUMS` with a matching digest, within the size limits;
//! nothing in an archive is ever written to disk under a name it chose.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use super::Error;
use super::manifest::{Manifest, is_safe_path};

/// The largest component accepted: room for an interpreter (a Python component built with
/// componentize-py, CPython included, is about 18 MiB).
pub const MAX_COMPONENT_BYTES: usize = 40 << 20;
/// The largest archive, uncompressed, all members together.
pub const MAX_TOTAL_BYTES: usize = 56 << 20;
/// The most members an archive may have.
pub const MAX_MEMBERS: usize = 512;
/// The largest template or asset.
pub const MAX_FILE_BYTES: usize = 4 << 20;

const SUMS: &str = "SHA256SUMS";
const SIGNATURE: &str = "SIGNATURE";
const MANIFEST: &str = "manifest.json";
const COMPONENT: &str = "plugin.wasm";

/// A plugin archive in memory, verified.
#[derive(Debug, Clone)]
pub struct Archive {
    pub manifest: Manifest,
    pub component: Vec<u8>,
    /// `templates/…` and `assets/…` members by path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Hex SHA-256 of the component (its compiled form is cached under it).
    pub component_sha256: String,
    /// Hex SHA-256 of `SHA256SUMS`: identifies everything in the archive (manifest, component,
    /// templates, assets) — what the runtime keys a loaded plugin by.
    pub digest: String,
    /// Hex SHA-256 of every member, as listed in `SHA256SUMS`.
    pub sums: BTreeMap<String, String>,
    pub signature: SignatureStatus,
}

/// Whether and by whom an archive is signed. Whether the key is trusted is the installer's
/// decision (a partner's trusted publisher keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    Unsigned,
    /// A valid signature by this public key (`ed25519:<base64>`).
    Valid {
        public_key: String,
    },
}

impl std::fmt::Display for SignatureStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureStatus::Unsigned => f.write_str("unsigned"),
            SignatureStatus::Valid { public_key } => write!(f, "valid, by {public_key}"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn sums_text(sums: &BTreeMap<String, String>) -> String {
    sums.iter()
        .map(|(path, digest)| format!("{digest}  {path}\n"))
        .collect()
}

fn bad(message: impl Into<String>) -> Error {
    Error::Archive(message.into())
}

/// Builds an archive. Members are written in a fixed order with fixed metadata, so the same
/// inputs always give the same bytes.
pub fn pack(
    manifest: &Manifest,
    component: &[u8],
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<u8>, Error> {
    let mut members: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    members.insert(MANIFEST.into(), manifest.to_json().into_bytes());
    members.insert(COMPONENT.into(), component.to_vec());
    for (path, bytes) in files {
        if !(path.starts_with("templates/") || path.starts_with("assets/")) || !is_safe_path(path) {
            return Err(bad(format!(
                "{path}: only templates/ and assets/ may be packed"
            )));
        }
        members.insert(path.clone(), bytes.clone());
    }
    let sums: BTreeMap<String, String> = members
        .iter()
        .map(|(p, b)| (p.clone(), sha256_hex(b)))
        .collect();
    members.insert(SUMS.into(), sums_text(&sums).into_bytes());
    write_tar(&members)
}

fn write_tar(members: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, Error> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    // SHA256SUMS first so a reader can stream-check, then the rest in path order.
    let order = members
        .keys()
        .filter(|k| *k == SUMS)
        .chain(members.keys().filter(|k| *k == SIGNATURE))
        .chain(members.keys().filter(|k| *k != SUMS && *k != SIGNATURE));
    for path in order {
        let bytes = &members[path];
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, bytes.as_slice())
            .map_err(|e| bad(format!("cannot write {path}: {e}")))?;
    }
    let gz = tar.into_inner().map_err(|e| bad(e.to_string()))?;
    gz.finish().map_err(|e| bad(e.to_string()))
}

/// Reads every member of an archive with the size and path checks; nothing else is verified.
fn read_members(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    // The decompressed stream is capped, so a gzip bomb stops at the limit.
    let gz = flate2::read::GzDecoder::new(bytes)
        .take(MAX_TOTAL_BYTES as u64 + 4096 * MAX_MEMBERS as u64);
    let mut tar = tar::Archive::new(gz);
    let mut members = BTreeMap::new();
    let mut total = 0usize;
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a plugin archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("not a plugin archive: {e}")))?;
        let kind = entry.header().entry_type();
        let path_bytes = entry.path_bytes().into_owned();
        let path = String::from_utf8(path_bytes).map_err(|_| bad("a member name is not UTF-8"))?;
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!(
                "{path}: links and special files are not allowed"
            )));
        }
        if !is_safe_path(&path) {
            return Err(bad(format!(
                "{path:?}: member paths must be relative and stay inside the archive"
            )));
        }
        if members.len() >= MAX_MEMBERS {
            return Err(bad(format!("more than {MAX_MEMBERS} members")));
        }
        let size = usize::try_from(entry.header().size().map_err(|e| bad(e.to_string()))?)
            .unwrap_or(usize::MAX);
        let limit = if path == COMPONENT {
            MAX_COMPONENT_BYTES
        } else {
            MAX_FILE_BYTES
        };
        if size > limit {
            return Err(bad(format!("{path} is {size} bytes; the limit is {limit}")));
        }
        total = total.saturating_add(size);
        if total > MAX_TOTAL_BYTES {
            return Err(bad(format!(
                "the archive unpacks to more than {MAX_TOTAL_BYTES} bytes"
            )));
        }
        let mut data = Vec::with_capacity(size);
        entry
            .by_ref()
            .take(limit as u64 + 1)
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("{path}: {e}")))?;
        if data.len() != size {
            return Err(bad(format!("{path}: truncated")));
        }
        if members.insert(path.clone(), data).is_some() {
            return Err(bad(format!("{path} appears twice")));
        }
    }
    Ok(members)
}

fn parse_sums(text: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut sums = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (digest, path) = line
            .split_once("  ")
            .ok_or_else(|| bad(format!("{SUMS}: malformed line {line:?}")))?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("{SUMS}: malformed digest for {path}")));
        }
        sums.insert(path.to_owned(), digest.to_ascii_lowercase());
    }
    Ok(sums)
}

impl Archive {
    /// Reads and verifies an archive: paths, sizes, checksums, signature (if any), manifest
    /// and host-api compatibility. The component's imports are checked by the engine, which
    /// can read them.
    pub fn read(bytes: &[u8]) -> Result<Self, Error> {
        let mut members = read_members(bytes)?;
        let sums_bytes = members
            .remove(SUMS)
            .ok_or_else(|| bad(format!("no {SUMS}")))?;
        let sums_text_str =
            String::from_utf8(sums_bytes).map_err(|_| bad(format!("{SUMS} is not UTF-8")))?;
        let sums = parse_sums(&sums_text_str)?;
        let signature = match members.remove(SIGNATURE) {
            None => SignatureStatus::Unsigned,
            Some(sig) => verify_signature(&sig, sums_text_str.as_bytes())?,
        };
        for (path, data) in &members {
            match sums.get(path) {
                None => return Err(bad(format!("{path} is not listed in {SUMS}"))),
                Some(digest) if *digest != sha256_hex(data) => {
                    return Err(bad(format!("{path} does not match its SHA-256 in {SUMS}")));
                }
                Some(_) => {}
            }
        }
        if let Some(missing) = sums.keys().find(|p| !members.contains_key(*p)) {
            return Err(bad(format!("{missing} is listed in {SUMS} but missing")));
        }
        let manifest_bytes = members
            .remove(MANIFEST)
            .ok_or_else(|| bad(format!("no {MANIFEST}")))?;
        let manifest = Manifest::from_json(
            std::str::from_utf8(&manifest_bytes).map_err(|_| bad("the manifest is not UTF-8"))?,
        )?;
        let component = members
            .remove(COMPONENT)
            .ok_or_else(|| bad(format!("no {COMPONENT}")))?;
        if let Some(other) = members
            .keys()
            .find(|p| !(p.starts_with("templates/") || p.starts_with("assets/")))
        {
            return Err(bad(format!("{other}: unexpected member")));
        }
        for template in &manifest.capabilities.templates {
            if !members.contains_key(&format!("templates/{template}")) {
                return Err(bad(format!(
                    "the manifest declares template {template} but templates/{template} is missing"
                )));
            }
        }
        Ok(Self {
            digest: sha256_hex(sums_text_str.as_bytes()),
            component_sha256: sha256_hex(&component),
            manifest,
            component,
            files: members,
            sums,
            signature,
        })
    }

    /// The size of every member, for `inspect`.
    pub fn sizes(&self) -> BTreeMap<String, usize> {
        let mut sizes: BTreeMap<String, usize> = self
            .files
            .iter()
            .map(|(p, b)| (p.clone(), b.len()))
            .collect();
        sizes.insert(COMPONENT.into(), self.component.len());
        sizes
    }
}

/// A publisher key pair: `(private key PEM, public key "ed25519:<base64>")`.
pub fn keygen() -> Result<(String, String), Error> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| bad("key generation failed"))?;
    let pair =
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| bad("key generation failed"))?;
    let b64 = B64.encode(pkcs8.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok((pem, public_key_text(pair.public_key().as_ref())))
}

fn public_key_text(raw: &[u8]) -> String {
    format!("ed25519:{}", B64.encode(raw))
}

/// Parses `ed25519:<base64>` into the 32 raw key bytes.
pub fn parse_public_key(text: &str) -> Result<Vec<u8>, Error> {
    let raw = text
        .trim()
        .strip_prefix("ed25519:")
        .and_then(|b| B64.decode(b).ok())
        .filter(|k| k.len() == 32)
        .ok_or_else(|| bad("a publisher key looks like ed25519:<base64 of 32 bytes>"))?;
    Ok(raw)
}

/// Signs an archive with a publisher key (PEM PKCS#8), replacing any previous signature.
pub fn sign(archive: &[u8], private_key_pem: &str) -> Result<Vec<u8>, Error> {
    // Re-verify first: a signature vouches for contents that already check out.
    Archive::read(archive)?;
    let body: String = private_key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = B64
        .decode(body.trim())
        .map_err(|_| bad("the signing key is not a PEM private key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(&der)
        .map_err(|_| bad("the signing key is not an Ed25519 private key"))?;
    let mut members = read_members(archive)?;
    let sums = members
        .get(SUMS)
        .cloned()
        .ok_or_else(|| bad(format!("no {SUMS}")))?;
    let sig = pair.sign(&sums);
    let record = serde_json::json!({
        "algorithm": "ed25519",
        "public_key": public_key_text(pair.public_key().as_ref()),
        "signature": B64.encode(sig.as_ref()),
    });
    members.insert(SIGNATURE.into(), record.to_string().into_bytes());
    write_tar(&members)
}

fn verify_signature(record: &[u8], sums: &[u8]) -> Result<SignatureStatus, Error> {
    let record: serde_json::Value =
        serde_json::from_slice(record).map_err(|_| bad(format!("{SIGNATURE} is not JSON")))?;
    if record["algorithm"] != "ed25519" {
        return Err(bad(format!("{SIGNATURE}: only ed25519 is supported")));
    }
    let public_key = record["public_key"].as_str().unwrap_or_default().to_owned();
    let raw = parse_public_key(&public_key)?;
    let sig = record["signature"]
        .as_str()
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| bad(format!("{SIGNATURE}: malformed signature")))?;
    UnparsedPublicKey::new(&signature::ED25519, raw)
        .verify(sums, &sig)
        .map_err(|_| Error::BadSignature)?;
    Ok(SignatureStatus::Valid { public_key })
}

/// Reads and validates `plugin.toml` in `dir`, inlining a schema file named beside it.
pub fn read_manifest(dir: &Path) -> Result<Manifest, Error> {
    let path = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::Manifest(format!("{}: {e}", path.display())))?;
    let read_schema = |name: &str| -> Result<String, Error> {
        if !is_safe_path(name) {
            return Err(Error::Manifest(format!(
                "config.schema {name:?} must be a file in the plugin folder"
            )));
        }
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| Error::Manifest(format!("config.schema {name}: {e}")))
    };
    Manifest::parse(&text, Some(&read_schema))
}

/// Files under `dir/sub`, recursively, keyed by archive path (`sub/…`); dotfiles are skipped
/// and links refused.
fn collect(dir: &Path, sub: &str, into: &mut BTreeMap<String, Vec<u8>>) -> Result<(), Error> {
    let root = dir.join(sub);
    if !root.exists() {
        return Ok(());
    }
    let io = |p: &Path, e: std::io::Error| bad(format!("{}: {e}", p.display()));
    let mut stack = vec![root];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).map_err(|e| io(&folder, e))? {
            let entry = entry.map_err(|e| io(&folder, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().map_err(|e| io(&path, e))?;
            if kind.is_symlink() {
                return Err(bad(format!(
                    "{}: symbolic links are not packed",
                    path.display()
                )));
            }
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(dir)
                .map_err(|e| bad(e.to_string()))?
                .to_string_lossy()
                .replace('\\', "/");
            if !is_safe_path(&relative) {
                return Err(bad(format!("{relative}: not a packable file name")));
            }
            into.insert(relative, std::fs::read(&path).map_err(|e| io(&path, e))?);
        }
    }
    Ok(())
}

/// Packs a plugin folder (`plugin.toml`, `templates/`, `assets/`) with a component, after the
/// checks the installer makes: the manifest, the host-api range, the sizes and the
/// component's imports against the declared capabilities. Returns the archive as read back.
pub fn pack_dir(dir: &Path, wasm: &Path) -> Result<(Archive, Vec<u8>), Error> {
    let manifest = read_manifest(dir)?;
    manifest.check_host_api()?;
    let component = std::fs::read(wasm).map_err(|e| bad(format!("{}: {e}", wasm.display())))?;
    if component.len() > MAX_COMPONENT_BYTES {
        return Err(bad(format!(
            "the component is {} bytes; the limit is {MAX_COMPONENT_BYTES}",
            component.len()
        )));
    }
    // Routes written once, in the code, join the manifest's here.
    let manifest = super::declared::merged(manifest, &component)?;
    let mut files = BTreeMap::new();
    collect(dir, "templates", &mut files)?;
    collect(dir, "assets", &mut files)?;
    let imports = super::inspect_component(&component)?;
    super::check_imports(&manifest, &imports)?;
    let bytes = pack(&manifest, &component, &files)?;
    // Read it back with the installer's checks, so what is written is what will load.
    let archive = Archive::read(&bytes)?;
    Ok((archive, bytes))
}

/// Writes bytes to `path` atomically: a temporary file beside it, renamed over it.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let tmp = path.with_file_name(name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest::parse(
            "id = \"com.example.a\"\nversion = \"1.0.0\"\nhost_api = \"^0.1\"\nname = \"A\"\npublisher = \"E\"\n[capabilities]\ntemplates = [\"page.hbs\"]\n",
            None,
        )
        .unwrap()
    }

    fn files() -> BTreeMap<String, Vec<u8>> {
        [("templates/page.hbs".to_owned(), b"<p>{{x}}</p>".to_vec())].into()
    }

    #[test]
    fn a_packed_archive_reads_back_and_packing_is_reproducible() {
        let bytes = pack(&manifest(), b"\0asm component", &files()).unwrap();
        assert_eq!(
            bytes,
            pack(&manifest(), b"\0asm component", &files()).unwrap()
        );
        let archive = Archive::read(&bytes).unwrap();
        assert_eq!(archive.manifest, manifest());
        assert_eq!(archive.component, b"\0asm component");
        assert_eq!(archive.signature, SignatureStatus::Unsigned);
        assert_eq!(archive.component_sha256, sha256_hex(b"\0asm component"));
    }

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let (private, public) = keygen().unwrap();
        let signed = sign(&pack(&manifest(), b"c", &files()).unwrap(), &private).unwrap();
        assert_eq!(
            Archive::read(&signed).unwrap().signature,
            SignatureStatus::Valid { public_key: public }
        );
        // Swap the sums for those of other content: the signature no longer matches.
        let mut members = read_members(&signed).unwrap();
        members.insert(COMPONENT.into(), b"evil".to_vec());
        let mut sums = parse_sums(std::str::from_utf8(&members[SUMS]).unwrap()).unwrap();
        sums.insert(COMPONENT.into(), sha256_hex(b"evil"));
        members.insert(SUMS.into(), sums_text(&sums).into_bytes());
        let tampered = write_tar(&members).unwrap();
        assert!(matches!(Archive::read(&tampered), Err(Error::BadSignature)));
    }

    #[test]
    fn tampered_or_hostile_archives_are_refused() {
        let good = read_members(&pack(&manifest(), b"c", &files()).unwrap()).unwrap();

        let mut changed = good.clone();
        changed.insert(COMPONENT.into(), b"other".to_vec());
        let err = Archive::read(&write_tar(&changed).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not match its SHA-256"), "{err}");

        let mut extra = good.clone();
        extra.insert("templates/extra.hbs".into(), b"x".to_vec());
        let err = Archive::read(&write_tar(&extra).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not listed"), "{err}");

        // A traversal name can only be written with a raw header; the tar crate refuses it.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../etc/passwd");
        header.set_size(1);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append(&header, &b"x"[..]).unwrap();
        let bytes = tar.into_inner().unwrap().finish().unwrap();
        let err = Archive::read(&bytes).unwrap_err().to_string();
        assert!(err.contains("stay inside the archive"), "{err}");

        let mut link = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        link.append_link(&mut header, "templates/page.hbs", "/etc/passwd")
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&link.into_inner().unwrap()).unwrap();
        let err = Archive::read(&gz.finish().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("links"), "{err}");

        let err = Archive::read(b"not gzip at all").unwrap_err().to_string();
        assert!(err.contains("not a plugin archive"), "{err}");
    }

    #[test]
    fn safe_paths_are_plain_relative_paths() {
        for ok in ["templates/a.hbs", "assets/img/logo.png"] {
            assert!(is_safe_path(ok), "{ok}");
        }
        for bad in [
            "", "/abs", "a/../b", "./a", "a//b", "a\\b", "C:/x", "a/\u{0}",
        ] {
            assert!(!is_safe_path(bad), "{bad:?}");
        }
    }
}
