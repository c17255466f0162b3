//! Attacks on the server slug grammar's parity (DESIGN §9): the
//! DeletionRequest CRD admits exactly the servers the drain stores
//! (`key::is_server_slug`). `tests/key_matcher.rs` checks the CRD's schema
//! and CEL rule as the operator's own `validate` evaluates them (the Rust
//! `cel` crate and Rust regex); this checks them where they are enforced, a
//! real kube-apiserver (Go's `maxLength` counting, CEL with RE2's
//! `\p{Cc}`), with the request body sent as is (`kubectl create --raw`, so
//! no client-side YAML reading drops or refuses a character first).

// Only the control plane of the shared support, and not all of it.
#[allow(dead_code)]
#[path = "common/control_plane.rs"]
mod control_plane;

use serde_json::{Value, json};

use archiver_operator::archive::key;
use control_plane::with_crds;

const NAMESPACE: &str = "slug-parity";
const COLLECTION: &str =
    "/apis/archiver.uptime.dev/v1alpha1/namespaces/slug-parity/deletionrequests";

fn manifest(name: &str, slug: &str) -> Value {
    json!({
        "apiVersion": "archiver.uptime.dev/v1alpha1",
        "kind": "DeletionRequest",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "tenantId": "5ad0a7e8-0000-4000-8000-000000000001",
            "serverSlug": slug,
            "reason": "gdpr-art17",
            "requester": "5ad0a7e8-0000-4000-8000-000000000002",
        },
    })
}

/// Texts at the grammar's edges: separators and format characters that are
/// not controls (Zl, Zp, Cf), controls of every range (C0, DEL, C1),
/// combining marks alone and in NFD, whitespace at the ends, noncharacters
/// and private use, and runs at the 512-character limit of characters that
/// take one, two and four bytes in UTF-8 (and two UTF-16 units).
fn slugs() -> Vec<String> {
    let mut slugs: Vec<String> = [
        "web",
        " web",
        "web ",
        "a b",
        "caf\u{e9}",
        "cafe\u{301}",
        "\u{301}",
        "\u{200b}",
        "a\u{200d}b",
        "\u{2028}",
        "\u{2029}",
        "\u{feff}web",
        "\u{ad}",
        "\u{a0}",
        "\u{e000}",
        "\u{fffe}",
        "\u{10ffff}",
        "\u{1f1fa}\u{1f1f8}",
        "*?[]%_\\/",
        "\u{0}",
        "a\u{0}",
        "\t",
        "a\nb",
        "\u{1b}[31m",
        "\u{7f}",
        "\u{80}",
        "\u{85}",
        "\u{9f}",
        ":",
        "a:b",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for unit in ["s", "\u{e9}", "\u{1f600}"] {
        for n in [511, 512, 513] {
            slugs.push(unit.repeat(n));
        }
    }
    slugs
}

#[test]
fn the_api_server_admits_exactly_the_servers_the_drain_stores() {
    let cluster = with_crds();
    cluster.ensure_namespace(NAMESPACE).expect("namespace");
    let mut disagreements = Vec::new();
    for (n, slug) in slugs().iter().enumerate() {
        let body = manifest(&format!("slug-{n}"), slug).to_string();
        let answer = cluster.kubectl_with_stdin(
            &[
                "create",
                "--raw",
                &format!("{COLLECTION}?dryRun=All"),
                "-f",
                "-",
            ],
            Some(&body),
        );
        let drain_stores = key::is_server_slug(slug);
        if answer.success != drain_stores {
            disagreements.push(format!(
                "{slug:?} ({} chars): api server {}, drain {}: {}",
                slug.chars().count(),
                if answer.success { "admits" } else { "refuses" },
                if drain_stores { "stores" } else { "refuses" },
                answer.stderr.lines().next().unwrap_or_default()
            ));
        }
        if !answer.success {
            assert!(
                answer.stderr.contains("serverSlug"),
                "{slug:?} is refused for its serverSlug: {}",
                answer.stderr
            );
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// The API server stores a slug byte for byte: no Unicode normalisation,
/// trimming or replacement, so the NFD and NFC spellings of one name (two
/// servers to the drain) stay two names, and an erasure names exactly the
/// key spelling it was given.
#[test]
fn the_api_server_keeps_a_slug_byte_for_byte() {
    let cluster = with_crds();
    cluster.ensure_namespace(NAMESPACE).expect("namespace");
    for (name, slug) in [
        ("kept-nfd", "cafe\u{301}"),
        ("kept-nfc", "caf\u{e9}"),
        ("kept-spaces", " web\u{200b} "),
        ("kept-separator", "a\u{2028}b"),
    ] {
        let created = cluster.kubectl_with_stdin(
            &["create", "--raw", COLLECTION, "-f", "-"],
            Some(&manifest(name, slug).to_string()),
        );
        assert!(created.success, "{slug:?}: {}", created.stderr);
        let read = cluster
            .kubectl_ok(&["get", "--raw", &format!("{COLLECTION}/{name}")])
            .expect("readable");
        let object: Value = serde_json::from_str(&read).expect("JSON");
        assert_eq!(object["spec"]["serverSlug"].as_str(), Some(slug), "{name}");
    }
}
