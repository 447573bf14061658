//! Repositories on the test git servers, changed with the git command line (the server side of a
//! test, not the code under test).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::env::git_server;

pub struct Repo {
    pub name: String,
    work: tempfile::TempDir,
}

/// Runs `git ARGS` in `dir` as the test author; its trimmed stdout. Panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=capstan-test",
            "-c",
            "user.email=test@capstan.dev",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running git");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

impl Repo {
    /// A new bare repository on the servers, with `files` committed on `main`.
    pub fn create(name: &str, files: &[(&str, &str)]) -> Repo {
        let gs = git_server();
        let name = format!("{name}-{}", std::process::id());
        let bare = PathBuf::from(gs.var("GIT_REPO_ROOT")).join(format!("{name}.git"));
        git(
            Path::new("/"),
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        git(&bare, &["config", "http.receivepack", "true"]);
        // Tests delete `main` to see a GitRepository lose its branch.
        git(&bare, &["config", "receive.denyDeleteCurrent", "ignore"]);
        let work = tempfile::tempdir().unwrap();
        git(work.path(), &["init", "-q", "-b", "main"]);
        git(
            work.path(),
            &["remote", "add", "origin", bare.to_str().unwrap()],
        );
        let repo = Repo { name, work };
        repo.commit(files, "initial");
        repo
    }

    /// The local clone the test commits from, at the last commit pushed.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Writes `files` (path, content), commits and pushes the current branch; returns the SHA.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        self.change(files, &[], message)
    }

    /// Writes `files` and removes `remove` in one commit, pushed; returns the SHA.
    pub fn change(&self, files: &[(&str, &str)], remove: &[&str], message: &str) -> String {
        if !remove.is_empty() {
            let mut args = vec!["rm", "-q"];
            args.extend(remove);
            git(self.work.path(), &args);
        }
        for (path, content) in files {
            let path = self.work.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        git(self.work.path(), &["add", "-A"]);
        git(
            self.work.path(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(self.work.path(), &["push", "-q", "origin", "HEAD"]);
        self.head()
    }

    /// Sets `key` to `value` in the work tree's git configuration (signing keys, for one).
    pub fn configure(&self, key: &str, value: &str) {
        git(self.work.path(), &["config", key, value]);
    }

    /// Commits `files` (signed, when the configuration says so) without pushing, then pushes
    /// in its place a copy whose message is `message`, every other byte kept, its signature
    /// included: a commit changed after it was signed. Returns the copy's SHA.
    pub fn tamper(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            std::fs::write(self.work.path().join(path), content).unwrap();
        }
        git(self.work.path(), &["commit", "-q", "-a", "-m", "as signed"]);
        let raw = git(self.work.path(), &["cat-file", "commit", "HEAD"]);
        let (headers, _) = raw.split_once("\n\n").expect("a commit has a message");
        let object = self.work.path().join(".git/tampered-commit");
        std::fs::write(&object, format!("{headers}\n\n{message}\n")).unwrap();
        let path = object.to_str().unwrap();
        let sha = git(
            self.work.path(),
            &["hash-object", "-t", "commit", "-w", path],
        );
        git(self.work.path(), &["reset", "-q", "--hard", &sha]);
        git(self.work.path(), &["push", "-q", "-f", "origin", "HEAD"]);
        sha
    }

    /// The commit the work tree's current branch points at (what was pushed last).
    pub fn head(&self) -> String {
        git(self.work.path(), &["rev-parse", "HEAD"])
    }

    /// Commits a symbolic link at `path` pointing at `target`, pushed; returns the SHA.
    pub fn symlink(&self, path: &str, target: &str, message: &str) -> String {
        let link = self.work.path().join(path);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, link).unwrap();
        self.commit(&[], message)
    }

    /// Removes `paths`, commits and pushes.
    pub fn remove(&self, paths: &[&str], message: &str) -> String {
        self.change(&[], paths, message)
    }

    /// Creates `branch` from the current commit, switches to it and commits `files` on it.
    pub fn branch(&self, branch: &str, files: &[(&str, &str)]) -> String {
        git(self.work.path(), &["checkout", "-q", "-b", branch]);
        self.commit(files, &format!("on {branch}"))
    }

    pub fn checkout(&self, branch: &str) {
        git(self.work.path(), &["checkout", "-q", branch]);
    }

    /// An annotated tag on the current commit, pushed.
    pub fn tag(&self, tag: &str) {
        git(self.work.path(), &["tag", "-a", "-m", tag, tag]);
        git(self.work.path(), &["push", "-q", "origin", tag]);
    }

    /// Pushes the current commit to `refname` on the server (`refs/pull/1/head`, as a forge
    /// writes a pull request's head).
    pub fn push_ref(&self, refname: &str) {
        git(
            self.work.path(),
            &["push", "-q", "origin", &format!("HEAD:{refname}")],
        );
    }

    /// Deletes `branch` on the server.
    pub fn delete_branch(&self, branch: &str) {
        git(
            self.work.path(),
            &["push", "-q", "origin", &format!(":{branch}")],
        );
    }

    /// Replaces the current branch on the server with a new single commit holding `files`
    /// (a history rewrite), and returns its SHA.
    pub fn force_push(&self, files: &[(&str, &str)]) -> String {
        git(self.work.path(), &["checkout", "-q", "--orphan", "rewrite"]);
        git(self.work.path(), &["rm", "-rq", "--cached", "."]);
        git(self.work.path(), &["clean", "-fdq"]);
        for (path, content) in files {
            let path = self.work.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        git(self.work.path(), &["add", "-A"]);
        git(self.work.path(), &["commit", "-q", "-m", "rewritten"]);
        git(self.work.path(), &["branch", "-M", "main"]);
        git(self.work.path(), &["push", "-q", "-f", "origin", "main"]);
        self.head()
    }

    pub fn http_url(&self) -> String {
        format!("{}/{}.git", git_server().var("GIT_HTTP_URL"), self.name)
    }

    /// Over TLS, with a certificate from the server's private CA (`GIT_HTTPS_CA`).
    pub fn https_url(&self) -> String {
        format!("{}/{}.git", git_server().var("GIT_HTTPS_URL"), self.name)
    }

    pub fn auth_url(&self) -> String {
        format!(
            "{}/{}.git",
            git_server().var("GIT_HTTP_AUTH_URL"),
            self.name
        )
    }

    /// Needs `Authorization: Bearer $GIT_HTTP_TOKEN`.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}.git",
            git_server().var("GIT_HTTP_TOKEN_URL"),
            self.name
        )
    }

    /// Redirects to the repository on another host (127.0.0.2).
    pub fn moved_url(&self) -> String {
        format!(
            "{}/{}.git",
            git_server().var("GIT_HTTP_MOVED_URL"),
            self.name
        )
    }

    pub fn ssh_url(&self) -> String {
        let gs = git_server();
        format!(
            "{}{}/{}.git",
            gs.var("GIT_SSH_URL"),
            gs.var("GIT_SSH_REPO_ROOT"),
            self.name
        )
    }
}
