//! `spec.verify`: the signatures of the commit (and of the annotated tag) a ref names, read from
//! the cache, checked against the OpenPGP public keys and SSH allowed signers of a Secret. A
//! revision that fails is not applied.

use std::collections::BTreeMap;

use git2::{ErrorCode, ObjectType, Oid, Repository};
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;
use ssh_key::{HashAlg, PublicKey, SshSig};

use super::Resolved;
use crate::api::VerifyMode;

/// An object's signature, if it has one, and the bytes it signs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signed {
    pub signature: Option<Vec<u8>>,
    pub data: Vec<u8>,
}

/// What `verify` looks at: the commit and, when the ref names one, the annotated tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signatures {
    pub commit: (Oid, Signed),
    pub tag: Option<Tag>,
}

/// The annotated tag a ref names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    /// Its name on the remote (`v1`, of `refs/tags/v1`) and its object.
    pub name: String,
    pub oid: Oid,
    pub signed: Signed,
    /// What the signed object says of itself: its name and the object it points at. A remote
    /// could otherwise advertise a tag signed for another name or commit.
    pub says: (String, Oid),
}

/// The lines with which a signature starts, in a tag's body (as git finds them).
const SIGNATURE_STARTS: [&str; 4] = [
    "-----BEGIN PGP SIGNATURE-----",
    "-----BEGIN PGP MESSAGE-----",
    "-----BEGIN SIGNED MESSAGE-----",
    "-----BEGIN SSH SIGNATURE-----",
];

impl Default for Signatures {
    fn default() -> Self {
        Signatures {
            commit: (Oid::ZERO_SHA1, Signed::default()),
            tag: None,
        }
    }
}

impl Signatures {
    pub fn read(repo: &Repository, resolved: &Resolved) -> Result<Signatures, git2::Error> {
        let commit = match repo.extract_signature(&resolved.oid, None) {
            Ok((signature, data)) => Signed {
                signature: Some(signature.to_vec()),
                data: data.to_vec(),
            },
            Err(e) if e.code() == ErrorCode::NotFound => Signed::default(),
            Err(e) => return Err(e),
        };
        let tag = match &resolved.tag {
            Some((name, oid)) => {
                let odb = repo.odb()?;
                let object = odb.read(*oid)?;
                if object.kind() != ObjectType::Tag {
                    return Err(git2::Error::from_str(&format!("{oid} is not a tag object")));
                }
                let tag = repo.find_tag(*oid)?;
                Some(Tag {
                    name: name.clone(),
                    oid: *oid,
                    signed: split_tag(object.data()),
                    says: (
                        String::from_utf8_lossy(tag.name_bytes()).into_owned(),
                        tag.target_id(),
                    ),
                })
            }
            None => None,
        };
        Ok(Signatures {
            commit: (resolved.oid, commit),
            tag,
        })
    }
}

/// A tag object's body: what precedes the last line that starts a signature is what is signed.
fn split_tag(body: &[u8]) -> Signed {
    let mut start = None;
    let mut line = 0;
    while line < body.len() {
        if SIGNATURE_STARTS
            .iter()
            .any(|s| body[line..].starts_with(s.as_bytes()))
        {
            start = Some(line);
        }
        line = body[line..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| line + i + 1);
    }
    match start {
        Some(at) => Signed {
            signature: Some(body[at..].to_vec()),
            data: body[..at].to_vec(),
        },
        None => Signed {
            signature: None,
            data: body.to_vec(),
        },
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("secret {secret}: {message}")]
    Keys { secret: String, message: String },
    #[error(
        "verify.mode {mode} needs a ref naming an annotated tag (ref.tag, ref.semver or a refs/tags/ name)"
    )]
    NoTag { mode: &'static str },
    #[error("{object} is not signed")]
    Unsigned { object: String },
    #[error("{object} is signed by {key}, which is not among the trusted keys of secret {secret}")]
    UnknownKey {
        object: String,
        key: String,
        secret: String,
    },
    #[error("{object}: the signature by {key} does not match it (changed after signing?)")]
    BadSignature { object: String, key: String },
    #[error("{object}: {message}")]
    Malformed { object: String, message: String },
    #[error("{object} does not belong to the ref: {says}")]
    TagMismatch { object: String, says: String },
}

/// One line of an allowed signers file (git's `gpg.ssh.allowedSignersFile`).
#[derive(Debug)]
struct AllowedSigner {
    principals: String,
    key: PublicKey,
}

/// The keys of a verify Secret: `*.asc` entries hold armored OpenPGP public keys (one or more
/// blocks each), `allowed_signers` holds SSH keys as git's allowed signers file does.
#[derive(Debug)]
pub struct TrustedKeys {
    secret: String,
    openpgp: Vec<SignedPublicKey>,
    ssh: Vec<AllowedSigner>,
}

/// The entry of a verify Secret that holds SSH allowed signers.
pub const ALLOWED_SIGNERS_KEY: &str = "allowed_signers";

/// rpgp's errors may print whole byte buffers; a status line wants their gist.
fn short(e: impl std::fmt::Display) -> String {
    let text = e.to_string();
    match text.char_indices().nth(160) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

impl TrustedKeys {
    pub fn from_secret_data(
        secret: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<TrustedKeys, VerifyError> {
        let refuse = |message: String| VerifyError::Keys {
            secret: secret.to_string(),
            message,
        };
        let mut keys = TrustedKeys {
            secret: secret.to_string(),
            openpgp: Vec::new(),
            ssh: Vec::new(),
        };
        for (name, value) in data {
            let text =
                std::str::from_utf8(value).map_err(|_| refuse(format!("{name} is not text")))?;
            if name.ends_with(".asc") {
                let parsed = openpgp_keys(text).map_err(|e| refuse(format!("{name}: {e}")))?;
                keys.openpgp.extend(parsed);
            } else if name == ALLOWED_SIGNERS_KEY {
                for (n, line) in text.lines().enumerate() {
                    let signer = allowed_signer(line)
                        .map_err(|e| refuse(format!("{name} line {}: {e}", n + 1)))?;
                    keys.ssh.extend(signer);
                }
            }
        }
        if keys.openpgp.is_empty() && keys.ssh.is_empty() {
            return Err(refuse(format!(
                "no keys: put OpenPGP public keys in entries named *.asc, SSH keys in {ALLOWED_SIGNERS_KEY}"
            )));
        }
        Ok(keys)
    }

    /// Checks what `mode` asks of `signatures`.
    pub fn verify(&self, mode: VerifyMode, signatures: &Signatures) -> Result<(), VerifyError> {
        let (head, tag) = match mode {
            VerifyMode::Head => (true, false),
            VerifyMode::Tag => (false, true),
            VerifyMode::TagAndHead => (true, true),
        };
        if tag {
            let Some(tag) = &signatures.tag else {
                return Err(VerifyError::NoTag {
                    mode: mode.as_str(),
                });
            };
            let object = format!("tag {} ({})", tag.name, tag.oid);
            let commit = signatures.commit.0;
            if tag.says != (tag.name.clone(), commit) {
                let (name, target) = &tag.says;
                return Err(VerifyError::TagMismatch {
                    object,
                    says: format!("it is tag {name} of {target}, not of commit {commit}"),
                });
            }
            self.check(&object, &tag.signed)?;
        }
        if head {
            let (oid, signed) = &signatures.commit;
            self.check(&format!("commit {oid}"), signed)?;
        }
        Ok(())
    }

    fn check(&self, object: &str, signed: &Signed) -> Result<(), VerifyError> {
        let Some(signature) = &signed.signature else {
            return Err(VerifyError::Unsigned {
                object: object.into(),
            });
        };
        let malformed = |message: String| VerifyError::Malformed {
            object: object.into(),
            message,
        };
        if signature.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
            let signature = SshSig::from_pem(signature)
                .map_err(|e| malformed(format!("unreadable SSH signature: {}", short(e))))?;
            self.check_ssh(object, &signature, &signed.data)
        } else if signature.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
            let (signature, _) = DetachedSignature::from_armor_single(signature.as_slice())
                .map_err(|e| malformed(format!("unreadable OpenPGP signature: {}", short(e))))?;
            self.check_openpgp(object, &signature, &signed.data)
        } else {
            Err(malformed(
                "a signature of a kind Capstan does not check (OpenPGP and SSH are checked)".into(),
            ))
        }
    }

    fn check_openpgp(
        &self,
        object: &str,
        signature: &DetachedSignature,
        data: &[u8],
    ) -> Result<(), VerifyError> {
        let issuer = {
            let fingerprints = signature.signature.issuer_fingerprint();
            let ids = signature.signature.issuer_key_id();
            match (fingerprints.first(), ids.first()) {
                (Some(f), _) => format!("OpenPGP key {f:X}"),
                (None, Some(id)) => format!("OpenPGP key id {id}"),
                (None, None) => "an OpenPGP key that it does not name".into(),
            }
        };
        // A key (or subkey) that issued the signature, among the trusted ones.
        let issued = |key: &dyn KeyDetails| {
            signature
                .signature
                .issuer_fingerprint()
                .iter()
                .any(|f| **f == key.fingerprint())
                || signature
                    .signature
                    .issuer_key_id()
                    .iter()
                    .any(|id| **id == key.legacy_key_id())
        };
        let mut known = false;
        for key in &self.openpgp {
            if issued(key) {
                known = true;
                if signature.verify(key, data).is_ok() {
                    return Ok(());
                }
            }
            for sub in &key.public_subkeys {
                if issued(sub) {
                    known = true;
                    if signature.verify(sub, data).is_ok() {
                        return Ok(());
                    }
                }
            }
        }
        Err(match known {
            true => VerifyError::BadSignature {
                object: object.into(),
                key: issuer,
            },
            false => VerifyError::UnknownKey {
                object: object.into(),
                key: issuer,
                secret: self.secret.clone(),
            },
        })
    }

    fn check_ssh(&self, object: &str, signature: &SshSig, data: &[u8]) -> Result<(), VerifyError> {
        let key = format!(
            "SSH key {}",
            signature.public_key().fingerprint(HashAlg::Sha256)
        );
        let Some(signer) = self
            .ssh
            .iter()
            .find(|s| s.key.key_data() == signature.public_key())
        else {
            return Err(VerifyError::UnknownKey {
                object: object.into(),
                key,
                secret: self.secret.clone(),
            });
        };
        // git signs in the namespace `git`.
        signer
            .key
            .verify("git", data, signature)
            .map_err(|_| VerifyError::BadSignature {
                object: object.into(),
                key: format!("{key} ({})", signer.principals),
            })
    }
}

/// Every public key in `text`: one or more armored blocks, each holding one or more keys.
fn openpgp_keys(text: &str) -> Result<Vec<SignedPublicKey>, String> {
    const END: &str = "-----END PGP PUBLIC KEY BLOCK-----";
    let mut keys = Vec::new();
    for block in text
        .split_inclusive(END)
        .filter(|b| b.contains("-----BEGIN"))
    {
        let (parsed, _) = SignedPublicKey::from_armor_many(block.as_bytes())
            .map_err(|e| format!("not an armored OpenPGP public key: {}", short(e)))?;
        for key in parsed {
            let key = key.map_err(|e| format!("unreadable OpenPGP key: {}", short(e)))?;
            key.verify_bindings()
                .map_err(|e| format!("OpenPGP key {:X}: {}", key.fingerprint(), short(e)))?;
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err("no armored OpenPGP public key in it".into());
    }
    Ok(keys)
}

/// Up to the first whitespace outside double quotes, and the rest.
fn token(s: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_ascii_whitespace() && !quoted => return (&s[..i], s[i..].trim_start()),
            _ => {}
        }
    }
    (s, "")
}

/// Comma-separated options, a comma inside double quotes belonging to the value.
fn split_options(options: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in options.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&options[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&options[start..]);
    parts
}

/// `principals [options] keytype base64 [comment]`; `None` for a blank line or a comment. Of
/// the options only `namespaces` is understood (it must admit `git`); a line with any other
/// (validity times, certificate authorities) is refused rather than trusted more widely than
/// it says.
fn allowed_signer(line: &str) -> Result<Option<AllowedSigner>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (principals, rest) = token(line);
    let (options, key) = match PublicKey::from_openssh(rest) {
        Ok(key) => (None, key),
        Err(_) => {
            let (options, key) = token(rest);
            let key = PublicKey::from_openssh(key)
                .map_err(|e| format!("not an SSH public key: {}", short(e)))?;
            (Some(options), key)
        }
    };
    for option in options.into_iter().flat_map(split_options) {
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        match name.to_ascii_lowercase().as_str() {
            "namespaces" => {
                if !value.trim_matches('"').split(',').any(|n| n == "git") {
                    return Ok(None);
                }
            }
            _ => return Err(format!("option {name:?} is not supported")),
        }
    }
    Ok(Some(AllowedSigner {
        principals: principals.trim_matches('"').to_string(),
        key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOggP3QdJjCWPWAu3TS7GbCFCKSxu7wv5Hw2VWNGQ5TQ";

    #[test]
    fn a_tag_is_signed_up_to_its_last_signature_line() {
        let body = b"object 1\ntype commit\ntag v1\ntagger t <t@x> 1 +0000\n\nv1\n\
                     -----BEGIN SSH SIGNATURE-----\nabc\n-----END SSH SIGNATURE-----\n";
        let signed = split_tag(body);
        assert!(signed.data.ends_with(b"\n\nv1\n"));
        assert!(
            signed
                .signature
                .unwrap()
                .starts_with(b"-----BEGIN SSH SIGNATURE-----")
        );
        let unsigned = split_tag(b"object 1\ntype commit\ntag v1\n\nv1\n");
        assert_eq!(unsigned.signature, None);
    }

    #[test]
    fn allowed_signers_lines() {
        let signer = allowed_signer(&format!("dev@example.com {ED25519} laptop"))
            .unwrap()
            .unwrap();
        assert_eq!(signer.principals, "dev@example.com");
        let quoted = format!("\"a@x,b@y\" namespaces=\"git,file\" {ED25519}");
        assert!(allowed_signer(&quoted).unwrap().is_some());
        let other = format!("a@x namespaces=\"file\" {ED25519}");
        assert!(allowed_signer(&other).unwrap().is_none(), "not for git");
        let timed = format!("a@x valid-before=\"20300101\" {ED25519}");
        assert!(
            allowed_signer(&timed)
                .unwrap_err()
                .contains("\"valid-before\" is not supported")
        );
        assert!(allowed_signer("# a comment").unwrap().is_none());
        assert!(allowed_signer("a@x ssh-ed25519 nonsense").is_err());
    }

    #[test]
    fn a_secret_without_keys_is_refused() {
        let data = BTreeMap::from([("README".to_string(), b"keys go here".to_vec())]);
        let refused = TrustedKeys::from_secret_data("signers", &data).unwrap_err();
        assert!(refused.to_string().starts_with("secret signers: no keys"));
        let data = BTreeMap::from([("team.asc".to_string(), b"not a key".to_vec())]);
        let refused = TrustedKeys::from_secret_data("signers", &data).unwrap_err();
        assert!(refused.to_string().contains("team.asc"), "{refused}");
    }

    #[test]
    fn unsigned_and_untagged_revisions_are_refused() {
        let data = BTreeMap::from([(
            ALLOWED_SIGNERS_KEY.to_string(),
            format!("dev@example.com {ED25519}").into_bytes(),
        )]);
        let keys = TrustedKeys::from_secret_data("signers", &data).unwrap();
        let signatures = Signatures::default();
        assert_eq!(
            keys.verify(VerifyMode::Head, &signatures)
                .unwrap_err()
                .to_string(),
            format!("commit {} is not signed", Oid::ZERO_SHA1)
        );
        assert!(matches!(
            keys.verify(VerifyMode::TagAndHead, &signatures),
            Err(VerifyError::NoTag { .. })
        ));
        // A tag object signed for another name, or another commit, is refused whatever its
        // signature.
        let commit = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        let elsewhere = Oid::from_str("2222222222222222222222222222222222222222").unwrap();
        let tagged = |name: &str, target: Oid| Signatures {
            commit: (commit, Signed::default()),
            tag: Some(Tag {
                name: "v2".into(),
                oid: Oid::ZERO_SHA1,
                signed: Signed::default(),
                says: (name.into(), target),
            }),
        };
        for (name, target) in [("v1", commit), ("v2", elsewhere)] {
            let refused = keys.verify(VerifyMode::Tag, &tagged(name, target));
            assert_eq!(
                refused.unwrap_err().to_string(),
                format!(
                    "tag v2 ({}) does not belong to the ref: it is tag {name} of {target}, not of commit {commit}",
                    Oid::ZERO_SHA1
                )
            );
        }
        assert!(matches!(
            keys.verify(VerifyMode::Tag, &tagged("v2", commit)),
            Err(VerifyError::Unsigned { .. })
        ));
    }
}
