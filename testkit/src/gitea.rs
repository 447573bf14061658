//! A real forge for tests: Gitea (tests/env/gitea.sh) on loopback with one admin user, its
//! repositories reached over smart HTTP, and its GitHub-style REST API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::repo::git;

pub struct Gitea {
    pub url: String,
    pub user: String,
    pub password: String,
    /// An API token of the user.
    pub token: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/env/gitea.sh");

impl Gitea {
    /// Starts a Gitea of its own, stopped when dropped (or, should the test process die first,
    /// when it ends).
    pub fn start() -> Gitea {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(SCRIPT)
            .arg("up")
            .arg(dir.path().join("gitea"))
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = crate::env::parse_exports(&String::from_utf8_lossy(&out.stdout));
        Gitea {
            url: env["GITEA_URL"].clone(),
            user: env["GITEA_USER"].clone(),
            password: env["GITEA_PASSWORD"].clone(),
            token: env["GITEA_TOKEN"].clone(),
            http: reqwest::Client::new(),
            dir,
        }
    }

    /// The user's repository `name` as the GitRepository's `url` names it.
    pub fn clone_url(&self, name: &str) -> String {
        format!("{}/{}/{name}.git", self.url, self.user)
    }

    /// The repository's address as a Provider's `address` names it.
    pub fn address(&self, name: &str) -> String {
        format!("{}/{}/{name}", self.url, self.user)
    }

    /// One call of the REST API (`/api/v1` + `path`) as the user; the status and the JSON answer.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.url))
            .header("Authorization", format!("token {}", self.token));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let code = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Like `call`, asserting the answer is `want`.
    pub async fn expect(&self, want: u16, method: &str, path: &str, body: Option<Value>) -> Value {
        let (code, answer) = self.call(method, path, body).await;
        assert_eq!(code, want, "{method} {path}: {answer}");
        answer
    }

    /// Creates the private repository `name` and a work tree for it; pushes go over HTTP with
    /// the user's password.
    pub async fn repository(&self, name: &str) -> Work {
        let repo = serde_json::json!({"name": name, "private": true});
        self.expect(201, "POST", "/user/repos", Some(repo)).await;
        let dir = self.dir.path().join("work").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        let remote = self
            .clone_url(name)
            .replace("://", &format!("://{}:{}@", self.user, self.password));
        Work { dir, remote }
    }

    /// The status of `context` on commit `sha` of repository `name`, once it is `state`.
    pub async fn status(&self, name: &str, sha: &str, context: &str, state: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let path = format!("/repos/{}/{name}/commits/{sha}/status", self.user);
        loop {
            let (_, got) = self.call("GET", &path, None).await;
            let ours = got["statuses"]
                .as_array()
                .and_then(|all| all.iter().find(|s| s["context"] == context).cloned());
            if let Some(s) = ours.filter(|s| s["status"] == state) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {state} status {context} on {sha}: {got}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// A work tree of one Gitea repository.
pub struct Work {
    pub dir: PathBuf,
    remote: String,
}

impl Work {
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.dir, args)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `files`, commits them and pushes to `branch`; returns the commit.
    pub fn commit(&self, branch: &str, files: &[(&str, &str)]) -> String {
        for (path, content) in files {
            let file = self.dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, content).unwrap();
        }
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", "change"]);
        self.git(&["push", "-q", &self.remote, &format!("HEAD:{branch}")]);
        self.git(&["rev-parse", "HEAD"])
    }
}

impl Drop for Gitea {
    /// Stops Gitea before its directory goes: the reaper's `down` would find nothing to stop in
    /// a removed directory, and a Gitea whose work path is gone keeps running and spins.
    fn drop(&mut self) {
        let _ = std::process::Command::new(SCRIPT)
            .arg("down")
            .arg(self.dir.path().join("gitea"))
            .output();
    }
}
