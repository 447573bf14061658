//! SOPS decryption (`spec.decryption`): before the render, every file of the checkout that SOPS
//! encrypted (YAML, JSON, dotenv) is decrypted in place by the pinned `sops`, run like kustomize
//! and helm (empty environment, no network, a deadline, capped output). The keys are handed to
//! it in its environment (age) and in a GnuPG home inside the checkout (OpenPGP), removed as soon
//! as the files are decrypted; plaintext is only ever in the checkout's own temporary directory.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgp::armor::{BlockType, Dearmor};

use super::tool::{self, Invocation};
use super::{Limits, RenderError};

/// The private keys SOPS may decrypt with.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Decryption {
    /// age identities (`AGE-SECRET-KEY-1...`), one per line.
    pub age: String,
    /// OpenPGP secret keys, unarmored and concatenated: a keyring as SOPS reads it.
    pub openpgp: Vec<u8>,
}

// Keys never reach a log line, even through `{:?}`.
impl std::fmt::Debug for Decryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryption")
            .field("age", &"<redacted>")
            .field("openpgp", &"<redacted>")
            .finish()
    }
}

impl Decryption {
    /// The keys of a decryption Secret: `*.agekey` entries hold age identities, `*.asc`
    /// entries armored OpenPGP secret keys (as `gpg --armor --export-secret-keys` writes them,
    /// without a passphrase).
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Decryption, String> {
        let mut keys = Decryption::default();
        for (name, value) in data {
            if name.ends_with(".agekey") {
                let text = std::str::from_utf8(value).map_err(|_| format!("{name} is not text"))?;
                if !text.contains("AGE-SECRET-KEY-") {
                    return Err(format!("{name} holds no age identity (AGE-SECRET-KEY-...)"));
                }
                keys.age.push_str(text.trim());
                keys.age.push('\n');
            } else if name.ends_with(".asc") {
                keys.openpgp
                    .extend(openpgp_secret_keys(value).map_err(|e| format!("{name}: {e}"))?);
            }
        }
        if keys.age.is_empty() && keys.openpgp.is_empty() {
            return Err(
                "no keys: put age identities in entries named *.agekey, OpenPGP secret keys in *.asc"
                    .into(),
            );
        }
        Ok(keys)
    }
}

/// Armored OpenPGP secret keys (one or more blocks), unarmored and concatenated.
fn openpgp_secret_keys(armored: &[u8]) -> Result<Vec<u8>, String> {
    const END: &str = "-----END PGP PRIVATE KEY BLOCK-----";
    let text = std::str::from_utf8(armored).map_err(|_| "not text".to_string())?;
    let mut keys = Vec::new();
    for block in text
        .split_inclusive(END)
        .filter(|b| b.contains("-----BEGIN"))
    {
        let mut dearmor = Dearmor::new(block.as_bytes());
        let mut bytes = Vec::new();
        dearmor
            .read_to_end(&mut bytes)
            .map_err(|_| "not an armored OpenPGP key".to_string())?;
        if dearmor.typ != Some(BlockType::PrivateKey) {
            return Err("not an OpenPGP secret key (PGP PRIVATE KEY BLOCK)".into());
        }
        keys.extend(bytes);
    }
    if keys.is_empty() {
        return Err("no armored OpenPGP secret key in it".into());
    }
    Ok(keys)
}

/// What marks a file SOPS encrypted: its values, and the metadata it adds.
const ENCRYPTED_VALUE: &[u8] = b"ENC[AES256_GCM,";
const METADATA: [&[u8]; 3] = [b"sops:", b"\"sops\"", b"sops_mac="];

/// SOPS's name for a file's format, by its extension; other files are not looked at.
fn format_of(path: &Path) -> Option<&'static str> {
    match path.extension()?.to_str()? {
        "yaml" | "yml" => Some("yaml"),
        "json" => Some("json"),
        "env" => Some("dotenv"),
        _ => None,
    }
}

/// Decrypts, in place, every SOPS-encrypted file among `paths` (files, and directories with
/// what they hold) of the checkout at `root`: what a render reads, so that files encrypted for
/// other applications of a monorepo are left alone. Returns their paths relative to `root`.
pub(super) fn decrypt(
    root: &Path,
    paths: &[PathBuf],
    keys: &Decryption,
    sops: &Path,
    limits: &Limits,
    timeout: Duration,
) -> Result<Vec<String>, RenderError> {
    let deadline = Instant::now() + timeout;
    let files = encrypted_files(paths, limits)?;
    if files.is_empty() {
        return Ok(Vec::new());
    }
    // The keys live inside the checkout, in a directory only this process may read, for no
    // longer than the decryption.
    let home = tempfile::Builder::new()
        .prefix(".capstan-sops-")
        .tempdir_in(root)
        .map_err(|e| io_error("a directory for the keys", e))?;
    let gnupg = home.path().join("gnupg");
    std::fs::create_dir(&gnupg).map_err(|e| io_error("a GnuPG home", e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gnupg, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io_error("a GnuPG home", e))?;
    if !keys.openpgp.is_empty() {
        std::fs::write(gnupg.join("secring.gpg"), &keys.openpgp)
            .map_err(|e| io_error("a GnuPG home", e))?;
    }
    let mut decrypted = Vec::new();
    for (path, format) in files {
        let rel = super::walk::rel_string(root, &path);
        let failed = |message: String| RenderError::Decryption {
            file: rel.clone(),
            message,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let plaintext = tool::run(Invocation {
            tool: "sops",
            program: sops,
            args: vec![
                "decrypt".into(),
                "--input-type".into(),
                format.into(),
                "--output-type".into(),
                format.into(),
                OsString::from(&path),
            ],
            root,
            home: home.path(),
            env: vec![
                ("SOPS_AGE_KEY", OsString::from(&keys.age)),
                ("GNUPGHOME", gnupg.clone().into_os_string()),
            ],
            timeout: left,
            max_output: limits.max_file_bytes,
        })
        .map_err(|e| match e {
            RenderError::Tool { message, .. } => failed(explain(&message)),
            other => failed(other.to_string()),
        })?;
        std::fs::write(&path, plaintext).map_err(|e| failed(e.to_string()))?;
        decrypted.push(rel);
    }
    Ok(decrypted)
}

/// SOPS's message, with what it means for the keys when it does not say.
fn explain(message: &str) -> String {
    if message.contains("Failed to get the data key") {
        return format!("none of the keys of the decryption Secret can decrypt it ({message})");
    }
    if message.contains("MAC mismatch") {
        return format!("the file was changed after it was encrypted ({message})");
    }
    message.to_string()
}

fn io_error(what: &str, e: std::io::Error) -> RenderError {
    RenderError::Io {
        path: what.into(),
        message: e.to_string(),
    }
}

/// The files among `paths`, or under them (symbolic links not followed), that SOPS encrypted,
/// in path order.
fn encrypted_files(
    paths: &[PathBuf],
    limits: &Limits,
) -> Result<Vec<(PathBuf, &'static str)>, RenderError> {
    let mut paths: Vec<&PathBuf> = paths.iter().collect();
    paths.sort();
    // A directory below another is read with it.
    paths.dedup_by(|below, above| below.starts_with(&**above));
    let mut found = Vec::new();
    let mut seen = 0usize;
    let (mut dirs, files): (Vec<PathBuf>, Vec<PathBuf>) =
        paths.into_iter().cloned().partition(|p| p.is_dir());
    for path in files {
        if let Some(format) = format_of(&path)
            && is_encrypted(&path, limits.max_file_bytes)?
        {
            found.push((path, format));
        }
    }
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| io_error(&dir.display().to_string(), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&dir.display().to_string(), e))?;
            let kind = entry
                .file_type()
                .map_err(|e| io_error(&dir.display().to_string(), e))?;
            let path = entry.path();
            if kind.is_dir() {
                dirs.push(path);
                continue;
            }
            let Some(format) = format_of(&path).filter(|_| kind.is_file()) else {
                continue;
            };
            seen += 1;
            if seen > limits.max_files {
                return Err(RenderError::TooManyFiles {
                    limit: limits.max_files,
                });
            }
            if is_encrypted(&path, limits.max_file_bytes)? {
                found.push((path, format));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_encrypted(path: &Path, max_bytes: u64) -> Result<bool, RenderError> {
    let file = std::fs::File::open(path).map_err(|e| io_error(&path.display().to_string(), e))?;
    let mut bytes = Vec::new();
    // A file over the limit is the render's to refuse; its head is enough to tell.
    file.take(max_bytes)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(&path.display().to_string(), e))?;
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    Ok(has(ENCRYPTED_VALUE) && METADATA.iter().any(|m| has(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_sops_encrypted_are_decrypted() {
        let root = tempfile::tempdir().unwrap();
        let write = |rel: &str, text: &str| {
            let path = root.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        let value = "ENC[AES256_GCM,data:abc,iv:x,tag:y,type:str]";
        write(
            "apps/secret.yaml",
            &format!("data:\n  a: {value}\nsops:\n  mac: {value}\n"),
        );
        write(
            "apps/secret.json",
            &format!("{{\"a\": \"{value}\", \"sops\": {{}}}}"),
        );
        write("apps/app.env", &format!("A={value}\nsops_mac={value}\n"));
        write(
            "apps/plain.yaml",
            "kind: ConfigMap\n# sops: mentioned, not used\n",
        );
        write("apps/notes.txt", &format!("sops: {value}"));
        write(
            "other/secret.yaml",
            &format!("data:\n  a: {value}\nsops:\n  mac: {value}\n"),
        );
        write(
            "apps/sub/s.yaml",
            &format!("data:\n  a: {value}\nsops:\n  mac: {value}\n"),
        );
        write(
            "values.yaml",
            &format!("a: {value}\nsops:\n  mac: {value}\n"),
        );
        let read = |rel: &str| root.path().join(rel);
        let paths = [read("apps"), read("apps/sub"), read("values.yaml")];
        let files = encrypted_files(&paths, &Limits::default()).unwrap();
        let rel: Vec<(String, &str)> = files
            .iter()
            .map(|(p, f)| (super::super::walk::rel_string(root.path(), p), *f))
            .collect();
        assert_eq!(
            rel,
            [
                ("apps/app.env".to_string(), "dotenv"),
                ("apps/secret.json".to_string(), "json"),
                ("apps/secret.yaml".to_string(), "yaml"),
                ("apps/sub/s.yaml".to_string(), "yaml"),
                ("values.yaml".to_string(), "yaml"),
            ]
        );
    }

    #[test]
    fn a_secret_without_usable_keys_is_refused() {
        let data = |name: &str, value: &str| BTreeMap::from([(name.to_string(), value.into())]);
        let refused = |d| Decryption::from_secret_data(&d).unwrap_err();
        assert!(refused(data("README", "x")).starts_with("no keys"));
        assert!(refused(data("a.agekey", "hello")).contains("no age identity"));
        assert!(refused(data("team.asc", "hello")).contains("team.asc"));
        let keys = Decryption::from_secret_data(&data("a.agekey", "AGE-SECRET-KEY-1X\n")).unwrap();
        assert_eq!(keys.age, "AGE-SECRET-KEY-1X\n");
    }

    #[test]
    fn keys_are_not_printed() {
        let keys = Decryption {
            age: "AGE-SECRET-KEY-1SECRET".into(),
            openpgp: b"secret".to_vec(),
        };
        assert!(!format!("{keys:?}").contains("SECRET"));
    }
}
