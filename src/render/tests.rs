use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use super::*;

fn cm(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n")
}

fn write(root: &Path, rel: &str, contents: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, contents).unwrap();
}

fn tree(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (rel, contents) in files {
        write(dir.path(), rel, contents);
    }
    dir
}

fn run(
    root: &TempDir,
    path: Option<&str>,
    ignore: Option<&str>,
) -> Result<Vec<Manifest>, RenderError> {
    render(root.path(), &options(path, ignore, Limits::default()))
}

fn options<'a>(path: Option<&'a str>, ignore: Option<&'a str>, limits: Limits) -> Options<'a> {
    Options {
        path,
        ignore,
        helm: HelmOptions::default(),
        variables: None,
        limits,
        // Unit tests never run a tool: the checks before it must be what fails.
        tools: Tools {
            kustomize: "/nonexistent/kustomize".into(),
            helm: "/nonexistent/helm".into(),
            sops: "/nonexistent/sops".into(),
        },
        timeout: Duration::from_secs(10),
        decryption: None,
    }
}

fn sources(manifests: &[Manifest]) -> Vec<&str> {
    manifests.iter().map(|m| m.source.as_str()).collect()
}

fn names(manifests: &[Manifest]) -> Vec<&str> {
    manifests
        .iter()
        .map(|m| m.object["metadata"]["name"].as_str().unwrap())
        .collect()
}

#[test]
fn multi_document_file_skips_empty_documents() {
    let text = format!(
        "---\n# only a comment\n---\n{}---\n---\n~\n---\n{}---\n",
        cm("a"),
        cm("b")
    );
    let root = tree(&[("app.yaml", &text)]);
    let out = run(&root, None, None).unwrap();
    assert_eq!(sources(&out), ["app.yaml#1", "app.yaml#2"]);
    assert_eq!(names(&out), ["a", "b"]);
    assert_eq!(
        out[0].object,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}})
    );
}

#[test]
fn order_is_by_path_bytes_across_directories() {
    let root = tree(&[
        ("b.yaml", &cm("b")),
        ("a/z.yaml", &cm("az")),
        ("a/b.yml", &cm("ab")),
        ("a.yaml", &cm("a")),
    ]);
    let out = run(&root, None, None).unwrap();
    // `.` (0x2e) sorts before `/` (0x2f), so `a.yaml` precedes the `a/` directory.
    assert_eq!(
        sources(&out),
        ["a.yaml#1", "a/b.yml#1", "a/z.yaml#1", "b.yaml#1"]
    );
    assert_eq!(run(&root, None, None).unwrap(), out);
}

#[test]
fn json_files_are_one_document() {
    let root = tree(&[
        (
            "svc.json",
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "prod"}}"#,
        ),
        ("null.json", "null"),
        ("blank.json", "  \n"),
    ]);
    let out = run(&root, None, None).unwrap();
    assert_eq!(sources(&out), ["svc.json#1"]);
    assert_eq!(out[0].object["kind"], "Service");
    assert_eq!(out[0].object["metadata"]["namespace"], "prod");
}

#[test]
fn invalid_json_reports_file_and_line() {
    let root = tree(&[(
        "bad.json",
        "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \n}\n",
    )]);
    match run(&root, None, None) {
        Err(RenderError::Json {
            file,
            line,
            message,
        }) => {
            assert_eq!(file, "bad.json");
            assert_eq!(line, 4);
            assert!(!message.contains("at line"), "{message}");
        }
        other => panic!("expected Json error, got {other:?}"),
    }
}

#[test]
fn non_manifest_files_and_git_dir_are_ignored() {
    let root = tree(&[
        ("app.yaml", &cm("app")),
        ("README.md", "# not yaml: [\n"),
        ("script.sh", "echo hi"),
        ("app.yaml.bak", "garbage: [\n"),
        ("Makefile", "all:"),
        (".git/config.yaml", "garbage: [\n"),
        ("sub/.git", "gitdir: ../.git/modules/sub"),
        (".hidden.yaml", &cm("hidden")),
        (".github/workflows/ci.yml", "on: push\n"),
    ]);
    let out = run(&root, None, None).unwrap();
    assert_eq!(
        sources(&out),
        ["app.yaml#1"],
        "hidden files and directories are left out"
    );
    // The spec's patterns can bring them back.
    let out = run(&root, None, Some("!.hidden.yaml")).unwrap();
    assert_eq!(sources(&out), [".hidden.yaml#1", "app.yaml#1"]);
}

#[test]
fn ignore_patterns_glob_dir_and_negation() {
    let root = tree(&[
        ("a.yaml", &cm("a")),
        ("b.yml", &cm("b")),
        ("keep.yml", &cm("keep")),
        ("notes.md", "x"),
        ("tests/t.yaml", &cm("t")),
        ("sub/tests/t2.yaml", &cm("t2")),
        ("sub/drop.yaml", &cm("drop")),
    ]);
    let ignore = "# comment\n*.yml\n/tests/\n!keep.yml\nsub/drop.yaml\n";
    let out = run(&root, None, Some(ignore)).unwrap();
    assert_eq!(
        sources(&out),
        ["a.yaml#1", "keep.yml#1", "sub/tests/t2.yaml#1"]
    );
}

#[test]
fn ignore_patterns_are_relative_to_path() {
    let root = tree(&[
        ("deploy/app.yaml", &cm("app")),
        ("deploy/tests/t.yaml", &cm("t")),
        ("tests/outside.yaml", &cm("outside")),
    ]);
    let out = run(&root, Some("deploy"), Some("/tests/")).unwrap();
    assert_eq!(sources(&out), ["deploy/app.yaml#1"]);
}

#[test]
fn invalid_ignore_pattern_is_an_error() {
    let root = tree(&[("a.yaml", &cm("a"))]);
    match run(&root, None, Some("*.md\n[z-a]\n")) {
        Err(RenderError::InvalidIgnore { message }) => {
            assert!(message.starts_with("line 2:"), "{message}");
        }
        other => panic!("expected InvalidIgnore, got {other:?}"),
    }
}

#[test]
fn path_spellings_are_normalised() {
    let root = tree(&[
        ("deploy/prod/app.yaml", &cm("app")),
        ("deploy/other.yaml", &cm("other")),
        ("root.yaml", &cm("root")),
    ]);
    for path in [
        "deploy/prod",
        "./deploy/prod",
        "deploy/prod/",
        "./deploy/prod/",
        "deploy//prod",
    ] {
        let out = run(&root, Some(path), None).unwrap();
        assert_eq!(sources(&out), ["deploy/prod/app.yaml#1"], "path {path}");
    }
    for path in [None, Some(""), Some("."), Some("./")] {
        let out = run(&root, path, None).unwrap();
        assert_eq!(
            sources(&out),
            [
                "deploy/other.yaml#1",
                "deploy/prod/app.yaml#1",
                "root.yaml#1"
            ],
            "path {path:?}"
        );
    }
}

#[test]
fn missing_path_is_an_error() {
    let root = tree(&[("a.yaml", &cm("a"))]);
    match run(&root, Some("./deploy/nope/"), None) {
        Err(RenderError::PathNotFound { path }) => assert_eq!(path, "deploy/nope"),
        other => panic!("expected PathNotFound, got {other:?}"),
    }
}

#[test]
fn path_that_is_a_file_is_an_error() {
    let root = tree(&[("a.yaml", &cm("a"))]);
    match run(&root, Some("a.yaml"), None) {
        Err(RenderError::NotADirectory { path }) => assert_eq!(path, "a.yaml"),
        other => panic!("expected NotADirectory, got {other:?}"),
    }
}

#[test]
fn path_climbing_out_of_root_escapes() {
    let outer = tempfile::tempdir().unwrap();
    write(outer.path(), "other.yaml", &cm("other"));
    write(outer.path(), "repo/x/a.yaml", &cm("a"));
    let root = outer.path().join("repo");
    for path in ["../", "..", "x/../../", "x/../..", "/etc", "/"] {
        match render(&root, &options(Some(path), None, Limits::default())) {
            Err(RenderError::PathEscapes { path: reported }) => assert_eq!(reported, path),
            other => panic!("path {path}: expected PathEscapes, got {other:?}"),
        }
    }
    // `..` that stays inside is fine.
    let out = render(&root, &options(Some("x/../x"), None, Limits::default())).unwrap();
    assert_eq!(sources(&out), ["x/a.yaml#1"]);
}

#[test]
fn path_symlinked_outside_root_escapes() {
    let outside = tree(&[("secret.yaml", &cm("secret"))]);
    let root = tree(&[("a.yaml", &cm("a"))]);
    symlink(outside.path(), root.path().join("deploy")).unwrap();
    match run(&root, Some("deploy"), None) {
        Err(RenderError::PathEscapes { path }) => assert_eq!(path, "deploy"),
        other => panic!("expected PathEscapes, got {other:?}"),
    }
}

#[test]
fn file_symlink_outside_root_rejects_the_render() {
    let root = tree(&[("app.yaml", &cm("app"))]);
    symlink("/etc/passwd", root.path().join("leak.yaml")).unwrap();
    match run(&root, None, None) {
        Err(RenderError::SymlinkEscapes { file }) => assert_eq!(file, "leak.yaml"),
        other => panic!("expected SymlinkEscapes, got {other:?}"),
    }
}

#[test]
fn escaping_symlinks_are_refused_whatever_they_point_at() {
    let outside = tree(&[("secret.yaml", &cm("secret"))]);
    // A directory link, a non-manifest name, and a dangling target outside: none is read, all
    // say the repository tries to reach out.
    let cases: [(&str, &Path); 3] = [
        ("sub/dir", outside.path()),
        ("notes.txt", Path::new("/etc/passwd")),
        (
            "gone.yaml",
            Path::new("../../../../../../nonexistent-capstan-target"),
        ),
    ];
    for (name, target) in cases {
        let root = tree(&[("app.yaml", &cm("app")), ("sub/x.yaml", &cm("x"))]);
        symlink(target, root.path().join(name)).unwrap();
        match run(&root, None, None) {
            Err(RenderError::SymlinkEscapes { file }) => assert_eq!(file, name),
            other => panic!("{name}: expected SymlinkEscapes, got {other:?}"),
        }
    }
}

#[test]
fn ignored_escaping_symlink_is_not_looked_at() {
    let root = tree(&[("app.yaml", &cm("app"))]);
    symlink("/etc/passwd", root.path().join("leak.yaml")).unwrap();
    let out = run(&root, None, Some("leak.yaml")).unwrap();
    assert_eq!(sources(&out), ["app.yaml#1"]);
}

#[test]
fn symlinks_inside_root_are_followed_for_files_only() {
    let root = tree(&[
        ("shared/common.yaml", &cm("common")),
        ("deploy/app.yaml", &cm("app")),
    ]);
    symlink(
        "../shared/common.yaml",
        root.path().join("deploy/common.yaml"),
    )
    .unwrap();
    // Not followed: the objects under it would otherwise be rendered twice.
    symlink("../shared", root.path().join("deploy/shared")).unwrap();
    let out = run(&root, Some("deploy"), None).unwrap();
    assert_eq!(sources(&out), ["deploy/app.yaml#1", "deploy/common.yaml#1"]);
    assert_eq!(names(&out), ["app", "common"]);
}

#[test]
fn invalid_yaml_reports_file_and_line() {
    let text = format!("{}---\n{}   bad: x\n", cm("a"), cm("b"));
    let root = tree(&[("deploy/bad.yaml", &text)]);
    let err = run(&root, None, None).unwrap_err();
    match &err {
        RenderError::Yaml {
            file,
            line,
            message,
        } => {
            assert_eq!(file, "deploy/bad.yaml");
            assert_eq!(*line, 10);
            assert!(!message.contains("line"), "{message}");
        }
        other => panic!("expected Yaml error, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("deploy/bad.yaml:10: invalid YAML: "),
        "{err}"
    );
}

#[test]
fn yaml_error_line_in_flow_collection() {
    let text = format!("{}data:\n  a: [1, 2]]\n", cm("a"));
    let root = tree(&[("a.yaml", &text)]);
    match run(&root, None, None) {
        Err(RenderError::Yaml { file, line, .. }) => {
            assert_eq!(file, "a.yaml");
            assert_eq!(line, 6);
        }
        other => panic!("expected Yaml error, got {other:?}"),
    }
}

#[test]
fn duplicate_yaml_keys_are_an_error() {
    let text = format!("{}data:\n  k: one\n  k: two\n", cm("a"));
    let root = tree(&[("a.yaml", &text)]);
    match run(&root, None, None) {
        Err(RenderError::Yaml { line, message, .. }) => {
            assert_eq!(line, 7);
            assert!(message.contains("duplicate"), "{message}");
        }
        other => panic!("expected Yaml error, got {other:?}"),
    }
}

#[test]
fn invalid_utf8_reports_line() {
    let root = tree(&[]);
    fs::write(root.path().join("a.yaml"), b"apiVersion: v1\nkind: \xff\n").unwrap();
    match run(&root, None, None) {
        Err(RenderError::Yaml {
            file,
            line,
            message,
        }) => {
            assert_eq!((file.as_str(), line), ("a.yaml", 2));
            assert_eq!(message, "not valid UTF-8");
        }
        other => panic!("expected Yaml error, got {other:?}"),
    }
}

#[test]
fn yaml_octal_follows_kubernetes() {
    let text = format!("{}data:\n  mode: 0644\n  n: 10\n", cm("a"));
    let root = tree(&[("a.yaml", &text)]);
    let out = run(&root, None, None).unwrap();
    assert_eq!(out[0].object["data"], json!({"mode": 420, "n": 10}));
}

fn invalid_object(text: &str) -> (String, String) {
    let root = tree(&[("obj.yaml", text)]);
    match run(&root, None, None) {
        Err(RenderError::InvalidObject { origin, message }) => (origin, message),
        other => panic!("expected InvalidObject for {text:?}, got {other:?}"),
    }
}

#[test]
fn objects_need_api_version_kind_and_name() {
    let second = |doc: &str| format!("{}---\n{doc}", cm("ok"));
    let cases = [
        ("apiVersion: v1\nmetadata:\n  name: a\n", "missing kind"),
        (
            "kind: ConfigMap\nmetadata:\n  name: a\n",
            "missing apiVersion",
        ),
        ("apiVersion: v1\nkind: ConfigMap\n", "missing metadata.name"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {}\n",
            "missing metadata.name",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ''\n",
            "metadata.name is empty",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: [a]\n",
            "metadata.name must be a string",
        ),
        (
            "apiVersion: v1\nkind: 3\nmetadata:\n  name: a\n",
            "kind must be a string",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: a\n",
            "metadata must be a mapping",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: 7\n",
            "metadata.namespace must be a string",
        ),
        (
            "apiVersion: a/b/c\nkind: X\nmetadata:\n  name: a\n",
            "apiVersion is not of the form [group/]version",
        ),
        ("- a\n- b\n", "expected a mapping, found a sequence"),
        ("just a string\n", "expected a mapping, found a scalar"),
    ];
    for (doc, expected) in cases {
        let (origin, message) = invalid_object(&second(doc));
        assert_eq!(origin, "obj.yaml#2", "{doc:?}");
        assert_eq!(message, expected, "{doc:?}");
    }
    let err = RenderError::InvalidObject {
        origin: "obj.yaml#2".into(),
        message: "missing kind".into(),
    };
    assert_eq!(err.to_string(), "obj.yaml#2: missing kind");
}

#[test]
fn list_is_expanded_into_its_items() {
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata:\n    name: web\n",
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}}"#
    );
    let text = format!("{}---\n{list}", cm("first"));
    let root = tree(&[("list.yaml", &text)]);
    let out = run(&root, None, None).unwrap();
    assert_eq!(
        sources(&out),
        ["list.yaml#1", "list.yaml#2/1", "list.yaml#2/2"]
    );
    assert_eq!(names(&out), ["first", "cfg", "web"]);
    assert_eq!(out[2].object["kind"], "Deployment");
}

#[test]
fn list_items_are_validated() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: a\n- apiVersion: v1\n  kind: Secret\n";
    let (origin, message) = invalid_object(text);
    assert_eq!(origin, "obj.yaml#1/2");
    assert_eq!(message, "missing metadata.name");
    let (origin, message) = invalid_object("apiVersion: v1\nkind: List\nitems: {}\n");
    assert_eq!(
        (origin.as_str(), message.as_str()),
        ("obj.yaml#1", "List items must be a sequence")
    );
}

#[test]
fn duplicates_are_refused_with_both_sources() {
    let root = tree(&[
        ("a.yaml", &cm("x")),
        ("b/c.yaml", &format!("{}---\n{}", cm("other"), cm("x"))),
    ]);
    match run(&root, None, None) {
        Err(RenderError::Duplicate { id, first, second }) => {
            assert_eq!(id, "ConfigMap x");
            assert_eq!(first, "a.yaml#1");
            assert_eq!(second, "b/c.yaml#2");
        }
        other => panic!("expected Duplicate, got {other:?}"),
    }

    let deployment = |ns: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\n"
        )
    };
    let root = tree(&[
        ("a.yaml", &deployment("prod")),
        ("b.yaml", &deployment("prod")),
    ]);
    match run(&root, None, None) {
        Err(RenderError::Duplicate { id, .. }) => assert_eq!(id, "Deployment.apps prod/web"),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    // Another version of the same group and kind is the same object.
    let v1beta1 = deployment("prod").replace("apps/v1", "apps/v1beta1");
    let root = tree(&[("a.yaml", &deployment("prod")), ("b.yaml", &v1beta1)]);
    assert!(matches!(
        run(&root, None, None),
        Err(RenderError::Duplicate { .. })
    ));

    // Other namespace, other group, or other kind: distinct objects.
    let root = tree(&[
        ("a.yaml", &deployment("prod")),
        ("b.yaml", &deployment("staging")),
        (
            "c.yaml",
            &deployment("prod").replace("apps/v1", "example.com/v1"),
        ),
        (
            "d.yaml",
            &deployment("prod").replace("Deployment", "StatefulSet"),
        ),
    ]);
    assert_eq!(run(&root, None, None).unwrap().len(), 4);
}

#[test]
fn empty_render_is_an_error() {
    let root = tree(&[
        ("README.md", "docs"),
        ("empty.yaml", "# nothing here\n---\n"),
        (
            "deploy/list.yaml",
            "apiVersion: v1\nkind: List\nitems: []\n",
        ),
    ]);
    match run(&root, None, None) {
        Err(RenderError::Empty { path }) => assert_eq!(path, "."),
        other => panic!("expected Empty, got {other:?}"),
    }
    match run(&root, Some("./deploy/"), None) {
        Err(err @ RenderError::Empty { .. }) => {
            assert!(matches!(&err, RenderError::Empty { path } if path == "deploy"));
            assert!(err.to_string().contains("\"deploy\""), "{err}");
        }
        other => panic!("expected Empty, got {other:?}"),
    }
}

#[test]
fn file_over_size_limit_is_refused() {
    let big = format!("{}data:\n  k: \"{}\"\n", cm("big"), "x".repeat(200));
    let root = tree(&[("a.yaml", &cm("a")), ("big.yaml", &big)]);
    let limits = Limits {
        max_file_bytes: 100,
        ..Limits::default()
    };
    match render(root.path(), &options(None, None, limits)) {
        Err(RenderError::FileTooLarge { file, size, limit }) => {
            assert_eq!(file, "big.yaml");
            assert_eq!(size, big.len() as u64);
            assert_eq!(limit, 100);
        }
        other => panic!("expected FileTooLarge, got {other:?}"),
    }
}

#[test]
fn total_over_limit_is_refused() {
    let root = tree(&[("a.yaml", &cm("a")), ("b.yaml", &cm("b"))]);
    let one = cm("a").len() as u64;
    let limits = Limits {
        max_total_bytes: one + 1,
        ..Limits::default()
    };
    match render(root.path(), &options(None, None, limits)) {
        Err(RenderError::TooLarge { size, limit }) => {
            assert_eq!((size, limit), (2 * one, one + 1));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn too_many_files_is_refused() {
    let root = tree(&[
        ("a.yaml", &cm("a")),
        ("b.yaml", &cm("b")),
        ("c/c.yaml", &cm("c")),
        ("notes.md", "not counted"),
    ]);
    let limits = Limits {
        max_files: 2,
        ..Limits::default()
    };
    match render(root.path(), &options(None, None, limits)) {
        Err(RenderError::TooManyFiles { limit }) => assert_eq!(limit, 2),
        other => panic!("expected TooManyFiles, got {other:?}"),
    }
    let limits = Limits {
        max_files: 3,
        ..Limits::default()
    };
    assert_eq!(
        render(root.path(), &options(None, None, limits))
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn billion_laughs_fails_fast() {
    let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: lol\ndata:\n");
    bomb.push_str("  a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for level in 1..10 {
        let refs = vec![format!("*a{}", level - 1); 10].join(",");
        bomb.push_str(&format!("  a{level}: &a{level} [{refs}]\n"));
    }
    let root = tree(&[("bomb.yaml", &bomb)]);
    let started = Instant::now();
    let result = run(&root, None, None);
    // 10^10 strings if expanded: finishing at all shows memory stayed bounded.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    match result {
        Err(RenderError::Yaml {
            file,
            line,
            message,
        }) => {
            assert_eq!(file, "bomb.yaml");
            assert!(line > 0);
            assert!(message.contains("too large or too complex"), "{message}");
        }
        other => panic!("expected Yaml error, got {other:?}"),
    }
}

#[test]
fn alias_count_is_limited() {
    let refs = vec!["*a"; 20].join(", ");
    let text = format!("{}data:\n  a: &a x\n  list: [{refs}]\n", cm("a"));
    let root = tree(&[("a.yaml", &text)]);
    let limits = Limits {
        max_aliases: 10,
        ..Limits::default()
    };
    match render(root.path(), &options(None, None, limits)) {
        Err(RenderError::Yaml { message, .. }) => assert!(message.contains("Aliases"), "{message}"),
        other => panic!("expected Yaml error, got {other:?}"),
    }
    // The same file within the default limit is fine: aliases are legal YAML.
    assert_eq!(run(&root, None, None).unwrap().len(), 1);
}

#[test]
fn deep_flow_nesting_fails() {
    let text = format!("{}data:\n  deep: {}\n", cm("a"), "[".repeat(10_000));
    let root = tree(&[("deep.yaml", &text)]);
    match run(&root, None, None) {
        Err(RenderError::Yaml {
            file,
            line,
            message,
        }) => {
            assert_eq!((file.as_str(), line), ("deep.yaml", 6));
            assert!(message.contains("recursion limit"), "{message}");
        }
        other => panic!("expected Yaml error, got {other:?}"),
    }
}

#[test]
fn deep_block_nesting_fails() {
    let mut text = cm("a");
    for level in 0..100 {
        text.push_str(&format!("{}k{level}:\n", "  ".repeat(level)));
    }
    let root = tree(&[("deep.yaml", &text)]);
    match run(&root, None, None) {
        Err(RenderError::Yaml { message, .. }) => assert!(message.contains("Depth"), "{message}"),
        other => panic!("expected Yaml error, got {other:?}"),
    }
}

#[test]
fn marker_files_choose_the_tool() {
    for (marker, tool) in [
        ("kustomization.yaml", "kustomize"),
        ("kustomization.yml", "kustomize"),
        ("Kustomization", "kustomize"),
        ("Chart.yaml", "helm"),
    ] {
        let root = tree(&[
            ("app/a.yaml", &cm("a")),
            (&format!("app/{marker}"), "x: 1\n"),
        ]);
        match run(&root, Some("app"), None).unwrap_err() {
            RenderError::ToolMissing { tool: t, path } => {
                assert_eq!(t, tool);
                assert_eq!(path, format!("/nonexistent/{tool}"));
            }
            other => panic!("{marker}: expected ToolMissing, got {other:?}"),
        }
    }
}

fn reference_error(kustomization: &str) -> (String, String, &'static str) {
    let root = tree(&[
        ("base/kustomization.yaml", "resources: [cm.yaml]\n"),
        ("base/cm.yaml", &cm("a")),
        ("overlays/prod/kustomization.yaml", kustomization),
    ]);
    match run(&root, Some("overlays/prod"), None).unwrap_err() {
        RenderError::Reference {
            file,
            entry,
            problem,
        } => (file, entry, problem),
        other => panic!("expected a Reference error, got {other:?}"),
    }
}

#[test]
fn kustomize_remote_bases_are_refused_before_the_tool_runs() {
    for remote in [
        "https://github.com/acme/app//deploy?ref=v1",
        "github.com/acme/app/deploy?ref=v1",
        "git@github.com:acme/app.git",
        "ssh://git@example.com/acme/app.git",
    ] {
        let (file, entry, problem) =
            reference_error(&format!("resources:\n- ../../base\n- {remote}\n"));
        assert_eq!(file, "overlays/prod/kustomization.yaml");
        assert_eq!(entry, remote);
        assert!(problem.contains("remote bases"), "{problem}");
    }
}

#[test]
fn kustomize_references_outside_the_checkout_are_refused() {
    for field in ["resources", "components", "bases", "generators"] {
        let (_, entry, problem) = reference_error(&format!("{field}:\n- ../../../../etc\n"));
        assert_eq!(entry, "../../../../etc");
        assert_eq!(problem, "resolves outside the repository");
    }
    // A kustomization elsewhere in the checkout counts too: the overlay may reach it.
    let root = tree(&[
        ("app/kustomization.yaml", "resources: [../lib]\n"),
        ("lib/kustomization.yaml", "resources: [../../outside]\n"),
    ]);
    let err = run(&root, Some("app"), None).unwrap_err();
    assert!(
        matches!(&err, RenderError::Reference { file, .. } if file == "lib/kustomization.yaml"),
        "{err:?}"
    );
}

/// The checks before the tool passed: the unit tests' tool path does not exist.
fn passes_the_checks(result: Result<Vec<Manifest>, RenderError>) {
    match result.unwrap_err() {
        RenderError::ToolMissing { .. } => {}
        other => panic!("expected the checks to pass (ToolMissing), got {other:?}"),
    }
}

#[test]
fn kustomize_refuses_an_escaping_symlink_in_what_the_build_reads() {
    let (a, b) = (cm("a"), cm("b"));
    let files = [
        ("app/kustomization.yaml", "resources: [cm.yaml, ../base]\n"),
        ("app/cm.yaml", a.as_str()),
        ("base/kustomization.yaml", "resources: [cm.yaml]\n"),
        ("base/cm.yaml", b.as_str()),
    ];
    // In a base the overlay reaches, in the overlay itself, and behind a symlinked directory.
    for (link, name) in [
        ("base", "passwd"),
        ("app", "passwd"),
        ("elsewhere", "passwd"),
    ] {
        let root = tree(&files);
        fs::create_dir_all(root.path().join(link)).unwrap();
        symlink("/etc/passwd", root.path().join(link).join(name)).unwrap();
        if link == "elsewhere" {
            symlink("../elsewhere", root.path().join("app/data")).unwrap();
        }
        match run(&root, Some("app"), None).unwrap_err() {
            RenderError::SymlinkEscapes { file } => assert_eq!(file, format!("{link}/{name}")),
            other => panic!("{link}: expected SymlinkEscapes, got {other:?}"),
        }
    }
}

#[test]
fn kustomize_looks_only_at_what_the_build_at_path_reads() {
    // A monorepo: the app at `apps/web` shares a base; other apps are broken in every way the
    // checks know, and none of it concerns `apps/web`.
    let root = tree(&[
        (
            "apps/web/kustomization.yaml",
            "resources: [../../base/web]\n",
        ),
        ("base/web/kustomization.yaml", "resources: [cm.yaml]\n"),
        ("base/web/cm.yaml", &cm("web")),
        (
            "apps/generated/kustomization.yaml",
            "resources: [generated.yaml]\n",
        ),
        (
            "apps/remote/kustomization.yaml",
            "resources: [https://github.com/acme/app//deploy]\n",
        ),
        (
            "apps/escapes/kustomization.yaml",
            "resources: [../../../../etc]\n",
        ),
        ("apps/invalid/kustomization.yaml", "resources: [unclosed\n"),
        ("apps/chart/Chart.yaml", "name: x\nversion: 0.1.0\n"),
    ]);
    symlink("/etc", root.path().join("apps/chart/templates")).unwrap();
    passes_the_checks(run(&root, Some("apps/web"), None));
    // Each broken app still fails its own GitRepository.
    for (app, want) in [
        ("generated", "is not in the repository"),
        ("remote", "is not in the repository"),
        ("escapes", "resolves outside the repository"),
    ] {
        match run(&root, Some(&format!("apps/{app}")), None).unwrap_err() {
            RenderError::Reference { problem, .. } => {
                assert!(problem.contains(want), "{app}: {problem}")
            }
            other => panic!("{app}: expected a Reference error, got {other:?}"),
        }
    }
    assert!(matches!(
        run(&root, Some("apps/invalid"), None).unwrap_err(),
        RenderError::Yaml { .. }
    ));
    match run(&root, Some("apps/chart"), None).unwrap_err() {
        RenderError::SymlinkEscapes { file } => assert_eq!(file, "apps/chart/templates"),
        other => panic!("expected SymlinkEscapes, got {other:?}"),
    }
}

#[test]
fn kustomize_follows_references_through_every_field_and_cycles_end() {
    let root = tree(&[
        (
            "app/kustomization.yaml",
            "resources: [../a]\ncomponents: [../c]\n",
        ),
        ("a/kustomization.yaml", "resources: [../b, ../app]\n"),
        ("b/kustomization.yaml", "transformers: [../t]\n"),
        (
            "c/kustomization.yaml",
            "kind: Component\ngenerators: [gen.yaml]\n",
        ),
        ("c/gen.yaml", "x: 1\n"),
        ("t/kustomization.yaml", "resources: [missing.yaml]\n"),
    ]);
    match run(&root, Some("app"), None).unwrap_err() {
        RenderError::Reference { file, entry, .. } => {
            assert_eq!(
                (file.as_str(), entry.as_str()),
                ("t/kustomization.yaml", "missing.yaml")
            )
        }
        other => panic!("expected a Reference error, got {other:?}"),
    }
    write(root.path(), "t/missing.yaml", &cm("t"));
    passes_the_checks(run(&root, Some("app"), None));
}

#[test]
fn helm_values_files_must_be_inside_the_checkout() {
    let root = tree(&[("chart/Chart.yaml", "name: x\nversion: 0.1.0\n")]);
    let mut opts = options(Some("chart"), None, Limits::default());
    opts.helm.values_files = vec!["../../../etc/hostname".into()];
    match render(root.path(), &opts).unwrap_err() {
        RenderError::PathEscapes { path } => assert_eq!(path, "../../../etc/hostname"),
        other => panic!("expected PathEscapes, got {other:?}"),
    }
    opts.helm.values_files = vec!["missing.yaml".into()];
    match render(root.path(), &opts).unwrap_err() {
        RenderError::ValuesFileNotFound { path } => assert_eq!(path, "missing.yaml"),
        other => panic!("expected ValuesFileNotFound, got {other:?}"),
    }
}

fn substituted(
    files: &[(&str, &str)],
    vars: &[(&str, &str)],
) -> Result<Vec<Manifest>, RenderError> {
    let root = tree(files);
    let variables: Variables = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut opts = options(None, None, Limits::default());
    opts.variables = Some(&variables);
    render(root.path(), &opts)
}

#[test]
fn substitution_keeps_the_authors_quoting() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-${env}\nspec:\n  replicas: ${replicas}\n  paused: \"${paused}\"\n";
    let out = substituted(
        &[("d.yaml", text)],
        &[("env", "prod"), ("replicas", "3"), ("paused", "true")],
    )
    .unwrap();
    assert_eq!(out[0].object["metadata"]["name"], "app-prod");
    assert_eq!(out[0].object["spec"]["replicas"], 3);
    assert_eq!(out[0].object["spec"]["paused"], "true");
}

#[test]
fn substitution_opt_out_and_undefined_variables() {
    let opted_out = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: script\n  annotations:\n    capstan.dev/substitute: disabled\ndata:\n  run.sh: echo ${HOME}\n";
    let file = format!(
        "{}---\n{opted_out}---\n# comment\n{}",
        cm("a"),
        cm("b-${suffix}")
    );
    let err = substituted(&[("all.yaml", &file)], &[]).unwrap_err();
    match &err {
        // The error names the variable and the line its document starts on.
        RenderError::Substitute {
            file,
            line,
            message,
        } => {
            assert_eq!(file, "all.yaml");
            assert_eq!(*line, 14);
            assert!(message.contains("${suffix}"), "{message}");
        }
        other => panic!("expected Substitute, got {other:?}"),
    }
    let out = substituted(&[("all.yaml", &file)], &[("suffix", "x")]).unwrap();
    assert_eq!(names(&out), ["a", "script", "b-x"]);
    assert_eq!(out[1].object["data"]["run.sh"], "echo ${HOME}");
}

#[test]
fn yaml_errors_after_a_marker_report_the_files_line() {
    let file = format!("{}---\n{}---\nkind: [\n", cm("a"), cm("b"));
    match run(&tree(&[("x.yaml", &file)]), None, None).unwrap_err() {
        RenderError::Yaml { line, .. } => assert!((10..=11).contains(&line), "line {line}"),
        other => panic!("expected Yaml, got {other:?}"),
    }
}

#[test]
fn split_yaml_keeps_directives_with_their_document() {
    let text = "a: 1\n---\nb: 2\n...\n%YAML 1.2\n---\nc: 3\n--- # d\nd: 4\n----not: 5\n";
    let docs = parse::split_yaml(text);
    let starts: Vec<usize> = docs.iter().map(|(line, _)| *line).collect();
    assert_eq!(starts, [0, 1, 7]);
    assert_eq!(docs[1].1, "---\nb: 2\n...\n%YAML 1.2\n---\nc: 3\n");
    let values = parse::documents(
        "x.yaml",
        text.as_bytes(),
        parse::Format::Yaml,
        &Limits::default(),
        None,
    )
    .unwrap();
    assert_eq!(values.len(), 4);
    assert_eq!(values[3]["----not"], 5);
}

/// A kustomization rendered by `script` (a shell script standing in for kustomize).
fn with_fake_kustomize(script: &str, limits: Limits) -> RenderError {
    use std::os::unix::fs::PermissionsExt;
    let root = tree(&[("app/kustomization.yaml", "resources: []\n")]);
    let tool = root.path().join("fake-kustomize");
    fs::write(&tool, format!("#!/bin/sh\n{script}\n")).unwrap();
    fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
    let mut opts = options(Some("app"), None, limits);
    opts.tools.kustomize = tool;
    opts.timeout = Duration::from_secs(1);
    render(root.path(), &opts).unwrap_err()
}

#[test]
fn a_tool_past_its_deadline_is_stopped() {
    let started = Instant::now();
    let err = with_fake_kustomize("while :; do :; done", Limits::default());
    assert!(
        matches!(&err, RenderError::Tool { tool: "kustomize", message } if message.contains("did not finish")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the tool was not killed"
    );
}

#[test]
fn a_tool_printing_too_much_is_cut_off() {
    let limits = Limits {
        max_total_bytes: 10_000,
        ..Limits::default()
    };
    let err = with_fake_kustomize(
        "while :; do echo 'a: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'; done",
        limits,
    );
    assert!(
        matches!(err, RenderError::TooLarge { limit: 10_000, .. }),
        "{err:?}"
    );
}

#[test]
fn a_failing_tool_reports_its_own_message_without_the_checkout_path() {
    let err = with_fake_kustomize(
        "echo \"Error: accumulating resources: $PWD/app/missing.yaml: no such file\" >&2; exit 1",
        Limits::default(),
    );
    match err {
        RenderError::Tool { message, .. } => {
            assert_eq!(
                message,
                "accumulating resources: app/missing.yaml: no such file"
            )
        }
        other => panic!("expected Tool, got {other:?}"),
    }
}

#[test]
fn a_tool_sees_no_environment_and_no_network() {
    // Set for this test process by cargo; the tool must not inherit it.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let err = with_fake_kustomize(
        "echo \"PATH=$PATH HTTPS_PROXY=$HTTPS_PROXY CARGO=${CARGO_MANIFEST_DIR:-unset}\" >&2; exit 1",
        Limits::default(),
    );
    let RenderError::Tool { message, .. } = err else {
        panic!("expected Tool, got {err:?}");
    };
    assert_eq!(
        message,
        "PATH=/nonexistent HTTPS_PROXY=http://127.0.0.1:9 CARGO=unset"
    );
}

#[test]
fn what_a_render_reads_is_unknown_once_a_symlink_could_redirect_it() {
    let root = tree(&[
        (
            "apps/web/kustomization.yaml",
            "resources: [../../base/web]\n",
        ),
        ("base/web/kustomization.yaml", "resources: [cm.yaml]\n"),
        ("base/web/cm.yaml", &cm("web")),
        ("plain/cm.yaml", &cm("plain")),
        ("real/app/cm.yaml", &cm("real")),
    ]);
    let reads = |path| reads(root.path(), &options(Some(path), None, Limits::default()));
    assert_eq!(reads("apps/web").unwrap(), ["apps/web", "base/web"]);
    assert_eq!(reads("plain").unwrap(), ["plain"]);
    // A link above the path: its target may change while no read tree does.
    symlink("real", root.path().join("linked")).unwrap();
    assert_eq!(reads("linked/app"), None);
    assert_eq!(reads("plain"), None, "a link elsewhere in the checkout");
}
