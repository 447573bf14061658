//! The real tools users sign and encrypt with, driven the way users run them: gpg (in a home
//! of the test's own), and the sops and age built with the render tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Repo;

/// Runs `program`, which must succeed; returns what it printed.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect(program);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A GnuPG home of the test's own, with git pointed at it through a wrapper.
pub struct Gpg {
    home: tempfile::TempDir,
    program: PathBuf,
}

impl Default for Gpg {
    fn default() -> Self {
        Gpg::new()
    }
}

impl Gpg {
    pub fn new() -> Gpg {
        // gpg-agent's socket path must stay short: a directory right under /tmp.
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .unwrap();
        let program = home.path().join("gpg.sh");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\nexec gpg --homedir {} \"$@\"\n",
                home.path().display()
            ),
        )
        .unwrap();
        run("chmod", &["+x", program.to_str().unwrap()]);
        Gpg { home, program }
    }

    pub fn gpg(&self, args: &[&str]) -> String {
        let mut all = vec!["--homedir", self.home.path().to_str().unwrap(), "--batch"];
        all.extend(args);
        run("gpg", &all)
    }

    /// A new signing key for `email`; returns its fingerprint.
    pub fn key(&self, email: &str) -> String {
        self.generate(email, "ed25519", "sign")
    }

    /// A new key for `email` with an encryption subkey (GnuPG's default algorithms); returns
    /// its fingerprint.
    pub fn encryption_key(&self, email: &str) -> String {
        self.generate(email, "default", "default")
    }

    fn generate(&self, email: &str, algorithm: &str, usage: &str) -> String {
        let uid = format!("Dev <{email}>");
        self.gpg(&[
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            &uid,
            algorithm,
            usage,
            "never",
        ]);
        let listing = self.gpg(&["--with-colons", "--fingerprint", email]);
        let fpr = listing.lines().find(|l| l.starts_with("fpr:")).unwrap();
        fpr.split(':').nth(9).unwrap().to_string()
    }

    pub fn public(&self, email: &str) -> String {
        self.gpg(&["--armor", "--export", email])
    }

    pub fn secret(&self, email: &str) -> String {
        self.gpg(&[
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--armor",
            "--export-secret-keys",
            email,
        ])
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Makes `repo` sign its commits and tags with `key` from now on.
    pub fn sign_with(&self, repo: &Repo, key: &str) {
        repo.configure("gpg.program", self.program.to_str().unwrap());
        repo.configure("user.signingkey", key);
        repo.configure("commit.gpgsign", "true");
        repo.configure("tag.gpgSign", "true");
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let home = self.home.path().to_str().unwrap().to_string();
        let _ = Command::new("gpgconf")
            .args(["--homedir", &home, "--kill", "gpg-agent"])
            .status();
    }
}

/// A program built with the render tools (`sops`, `age`, `age-keygen`).
fn render_tool(name: &str) -> PathBuf {
    let sops = crate::env::render_tools().sops;
    sops.parent().expect("the tools' directory").join(name)
}

/// A new age identity: the identity file as age-keygen writes it, and its recipient.
pub fn age_identity() -> (String, String) {
    let keygen = render_tool("age-keygen");
    let identity = run(keygen.to_str().unwrap(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("identity.txt");
    std::fs::write(&file, &identity).unwrap();
    let recipient = run(keygen.to_str().unwrap(), &["-y", file.to_str().unwrap()]);
    (identity, recipient.trim().to_string())
}

/// `plaintext` (YAML) encrypted by sops with `args` (`--age R`, `--pgp FPR`), its data and
/// stringData only, as people encrypt Secrets; `gpg` is the home sops finds OpenPGP keys in.
pub fn sops_encrypt(plaintext: &str, args: &[&str], gpg: Option<&Gpg>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret.yaml");
    std::fs::write(&file, plaintext).unwrap();
    let mut command = Command::new(render_tool("sops"));
    command
        .args(["encrypt", "--encrypted-regex", "^(data|stringData)$"])
        .args(args)
        .arg(&file)
        .env("HOME", dir.path());
    if let Some(gpg) = gpg {
        command.env("GNUPGHOME", gpg.home());
    }
    let output = command.output().expect("running sops");
    assert!(
        output.status.success(),
        "sops encrypt: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}
