//! Which commit a GitRepository's `ref` names, decided from the remote's advertised refs alone
//! (pure), and the revision string Capstan reports for it (`main@sha1:<sha>`, as Flux writes it).

use git2::Oid;

use crate::api::GitRef;
use crate::status::Reason;

/// What to fetch for a ref, and the commit it resolves to when the remote advertises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Refspecs that bring the commit into the cache.
    pub refspecs: Vec<String>,
    /// The commit, as advertised (a pinned commit is taken as given).
    pub oid: Oid,
    /// `<name>@sha1:<sha>`; `sha1:<sha>` for a bare pinned commit.
    pub revision: String,
    /// Whether a shallow fetch of depth 1 is enough.
    pub shallow: bool,
    /// The annotated tag the ref names, when it names one: its name and object.
    pub tag: Option<(String, Oid)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("branch {0:?} not found on the remote")]
    BranchNotFound(String),
    #[error("tag {0:?} not found on the remote")]
    TagNotFound(String),
    #[error("ref {0:?} not found on the remote")]
    RefNotFound(String),
    #[error("no tag matches the semver range {0:?}")]
    NoSemverMatch(String),
    #[error("invalid semver range {range:?}: {message}")]
    InvalidSemver { range: String, message: String },
    #[error("invalid commit {0:?}")]
    InvalidCommit(String),
}

impl ResolveError {
    pub fn reason(&self) -> Reason {
        match self {
            ResolveError::InvalidSemver { .. } | ResolveError::InvalidCommit(_) => {
                Reason::InvalidSpec
            }
            _ => Reason::RefNotFound,
        }
    }
}

/// Formats a revision the way status reports it.
pub fn revision(name: &str, oid: Oid) -> String {
    if name.is_empty() {
        format!("sha1:{oid}")
    } else {
        format!("{name}@sha1:{oid}")
    }
}

/// Resolves `git_ref` against `refs`, the remote's advertisement (`ls-remote`).
pub fn resolve(git_ref: &GitRef, refs: &[(String, Oid)]) -> Result<Resolved, ResolveError> {
    let lookup = |name: &str| refs.iter().find(|(n, _)| n == name).map(|(_, oid)| *oid);
    // An annotated tag advertises the tag object and, peeled, the commit it points at.
    let tag_commit = |tag: &str| {
        lookup(&format!("refs/tags/{tag}^{{}}")).or_else(|| lookup(&format!("refs/tags/{tag}")))
    };
    // Only an annotated tag is advertised twice: as its object and, peeled, as the commit.
    let annotated = |name: &str| {
        lookup(&format!("{name}^{{}}"))?;
        let tag = name.strip_prefix("refs/tags/").unwrap_or(name);
        Some((tag.to_string(), lookup(name)?))
    };
    if let Some(commit) = &git_ref.commit {
        let oid = Oid::from_str(commit).map_err(|_| ResolveError::InvalidCommit(commit.clone()))?;
        // The commit need not be a ref tip: fetch whole branches (not shallow) and find it there.
        let (refspecs, name) = match &git_ref.branch {
            Some(branch) => {
                if lookup(&format!("refs/heads/{branch}")).is_none() {
                    return Err(ResolveError::BranchNotFound(branch.clone()));
                }
                (vec![branch_refspec(branch)], branch.as_str())
            }
            None => (vec!["+refs/heads/*:refs/heads/*".to_string()], ""),
        };
        return Ok(Resolved {
            refspecs,
            oid,
            revision: revision(name, oid),
            shallow: false,
            tag: None,
        });
    }
    if let Some(tag) = &git_ref.tag {
        let oid = tag_commit(tag).ok_or_else(|| ResolveError::TagNotFound(tag.clone()))?;
        return Ok(Resolved {
            refspecs: vec![tag_refspec(tag)],
            oid,
            revision: revision(tag, oid),
            shallow: true,
            tag: annotated(&format!("refs/tags/{tag}")),
        });
    }
    if let Some(range) = &git_ref.semver {
        let req = parse_range(range)?;
        let best = refs
            .iter()
            .filter_map(|(name, _)| name.strip_prefix("refs/tags/"))
            .filter(|tag| !tag.ends_with("^{}"))
            .filter_map(|tag| {
                let version = semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()?;
                req.matches(&version).then_some((version, tag))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .ok_or_else(|| ResolveError::NoSemverMatch(range.clone()))?;
        let tag = best.1;
        let oid = tag_commit(tag).ok_or_else(|| ResolveError::TagNotFound(tag.to_string()))?;
        return Ok(Resolved {
            refspecs: vec![tag_refspec(tag)],
            oid,
            revision: revision(tag, oid),
            shallow: true,
            tag: annotated(&format!("refs/tags/{tag}")),
        });
    }
    if let Some(name) = &git_ref.name {
        // An annotated tag named in full (`refs/tags/v1`) advertises the tag object and, peeled,
        // its commit: the commit is what is checked out and reported.
        let oid = lookup(&format!("{name}^{{}}"))
            .or_else(|| lookup(name))
            .ok_or_else(|| ResolveError::RefNotFound(name.clone()))?;
        return Ok(Resolved {
            refspecs: vec![format!("+{name}:{name}")],
            oid,
            revision: revision(name, oid),
            shallow: true,
            tag: annotated(name),
        });
    }
    let branch = git_ref.branch.as_deref().unwrap_or("main");
    let oid = lookup(&format!("refs/heads/{branch}"))
        .ok_or_else(|| ResolveError::BranchNotFound(branch.to_string()))?;
    Ok(Resolved {
        refspecs: vec![branch_refspec(branch)],
        oid,
        revision: revision(branch, oid),
        shallow: true,
        tag: None,
    })
}

fn branch_refspec(branch: &str) -> String {
    format!("+refs/heads/{branch}:refs/heads/{branch}")
}

fn tag_refspec(tag: &str) -> String {
    format!("+refs/tags/{tag}:refs/tags/{tag}")
}

/// Accepts Flux's space-separated ranges (`>=1.2.0 <2`) as well as Cargo's comma-separated ones.
fn parse_range(range: &str) -> Result<semver::VersionReq, ResolveError> {
    let mut parts: Vec<String> = Vec::new();
    for token in range.split([' ', ',']).filter(|t| !t.is_empty()) {
        // An operator written apart from its version (`>= 1.2.0`) belongs to the next token.
        match parts.last_mut() {
            Some(last) if last.chars().all(|c| "<>=~^".contains(c)) => last.push_str(token),
            _ => parts.push(token.to_string()),
        }
    }
    semver::VersionReq::parse(&parts.join(", ")).map_err(|e| ResolveError::InvalidSemver {
        range: range.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    fn refs() -> Vec<(String, Oid)> {
        vec![
            ("HEAD".into(), oid(1)),
            ("refs/heads/main".into(), oid(1)),
            ("refs/heads/release".into(), oid(2)),
            ("refs/tags/v1.2.0".into(), oid(3)),
            ("refs/tags/v1.10.0".into(), oid(4)),
            ("refs/tags/v1.10.0^{}".into(), oid(5)),
            ("refs/tags/v2.0.0".into(), oid(6)),
            ("refs/tags/v2.1.0-rc.1".into(), oid(7)),
            ("refs/tags/not-semver".into(), oid(8)),
            ("refs/pull/7/head".into(), oid(9)),
        ]
    }

    fn git_ref(f: impl FnOnce(&mut GitRef)) -> GitRef {
        let mut r = GitRef::default();
        f(&mut r);
        r
    }

    #[test]
    fn branch() {
        let r = resolve(&git_ref(|r| r.branch = Some("release".into())), &refs()).unwrap();
        assert_eq!(r.oid, oid(2));
        assert_eq!(r.revision, format!("release@sha1:{}", oid(2)));
        assert_eq!(r.refspecs, ["+refs/heads/release:refs/heads/release"]);
        assert!(r.shallow);
        let err = resolve(&git_ref(|r| r.branch = Some("gone".into())), &refs()).unwrap_err();
        assert_eq!(err, ResolveError::BranchNotFound("gone".into()));
        // No branch at all means `main`.
        assert_eq!(resolve(&GitRef::default(), &refs()).unwrap().oid, oid(1));
    }

    #[test]
    fn annotated_tags_peel_to_their_commit() {
        let r = resolve(&git_ref(|r| r.tag = Some("v1.10.0".into())), &refs()).unwrap();
        assert_eq!(r.oid, oid(5));
        assert_eq!(r.revision, format!("v1.10.0@sha1:{}", oid(5)));
        assert_eq!(r.tag, Some(("v1.10.0".into(), oid(4))), "the tag object");
        let r = resolve(&git_ref(|r| r.tag = Some("v1.2.0".into())), &refs()).unwrap();
        assert_eq!(r.oid, oid(3));
        assert_eq!(r.tag, None, "a lightweight tag has no object of its own");
        let r = resolve(&git_ref(|r| r.semver = Some("^1.10".into())), &refs()).unwrap();
        assert_eq!(r.tag, Some(("v1.10.0".into(), oid(4))));
    }

    #[test]
    fn semver_picks_the_highest_match() {
        let pick = |range: &str| {
            resolve(&git_ref(|r| r.semver = Some(range.into())), &refs()).map(|r| r.revision)
        };
        assert!(pick(">=1.2.0 <2").unwrap().starts_with("v1.10.0@"));
        assert!(pick(">= 1.0.0, < 2.0.0").unwrap().starts_with("v1.10.0@"));
        assert!(pick("~1.2").unwrap().starts_with("v1.2.0@"));
        assert!(
            pick(">=2").unwrap().starts_with("v2.0.0@"),
            "pre-releases are skipped"
        );
        assert_eq!(pick(">=3"), Err(ResolveError::NoSemverMatch(">=3".into())));
        assert!(matches!(
            pick("banana"),
            Err(ResolveError::InvalidSemver { .. })
        ));
    }

    #[test]
    fn commit_with_and_without_branch() {
        let sha = oid(42).to_string();
        let r = resolve(&git_ref(|r| r.commit = Some(sha.clone())), &refs()).unwrap();
        assert_eq!(r.revision, format!("sha1:{sha}"));
        assert!(!r.shallow);
        let r = resolve(
            &git_ref(|r| {
                r.commit = Some(sha.clone());
                r.branch = Some("main".into());
            }),
            &refs(),
        )
        .unwrap();
        assert_eq!(r.revision, format!("main@sha1:{sha}"));
        assert_eq!(r.refspecs, ["+refs/heads/main:refs/heads/main"]);
    }

    #[test]
    fn any_ref_by_name() {
        let r = resolve(
            &git_ref(|r| r.name = Some("refs/pull/7/head".into())),
            &refs(),
        )
        .unwrap();
        assert_eq!(r.revision, format!("refs/pull/7/head@sha1:{}", oid(9)));
        let r = resolve(
            &git_ref(|r| r.name = Some("refs/tags/v1.10.0".into())),
            &refs(),
        )
        .unwrap();
        assert_eq!(
            r.oid,
            oid(5),
            "an annotated tag by name peels to its commit"
        );
        assert_eq!(r.revision, format!("refs/tags/v1.10.0@sha1:{}", oid(5)));
        let err = resolve(
            &git_ref(|r| r.name = Some("refs/pull/8/head".into())),
            &refs(),
        );
        assert_eq!(err.unwrap_err().reason(), Reason::RefNotFound);
    }
}
