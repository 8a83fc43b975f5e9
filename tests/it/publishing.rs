//! Records, collections, trust and collection CARs through the `oermesh` binary.

use crate::cli::{Mode, Node};

/// Adds `text` as a file and signs a record for it; returns (content CID, record CID).
fn publish_file(node: &Node, name: &str, text: &str, extra: &[&str]) -> (String, String) {
    let path = node.write(name, text.as_bytes()).display().to_string();
    let mut args = vec![
        "add",
        "-Q",
        path.as_str(),
        "--author",
        "Amina Okafor <https://example.org/amina>",
    ];
    args.extend_from_slice(extra);
    let out = node.ok(&args);
    let mut lines = out.lines();
    (
        lines.next().unwrap().to_string(),
        lines.next().unwrap().to_string(),
    )
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

fn a_signed_record_shows_verifies_and_attributes(mode: Mode) {
    let node = Node::init_in(mode);
    node.ok(&["key", "gen", "ministry"]);
    let (content, record) = publish_file(
        &node,
        "photosynthesis.md",
        "Plants turn light into sugar.",
        &[
            "--title",
            "Photosynthesis",
            "--license",
            "CC-BY-SA-3.0-IGO",
            "--language",
            "en",
            "--source",
            "https://example.org/p",
        ],
    );
    assert!(record.starts_with("bafyrei"), "{record}");
    let shown = node.ok(&["record", "show", &record]);
    assert!(shown.contains("signature    valid"), "{shown}");
    assert!(shown.contains("CC BY-SA 3.0 IGO"), "{shown}");
    assert!(
        shown.contains("https://creativecommons.org/licenses/by-sa/3.0/igo/"),
        "{shown}"
    );
    assert!(
        shown.contains("(trusted)"),
        "a node trusts its own keys: {shown}"
    );
    let by_content = node.ok(&["record", "show", &content]);
    assert!(by_content.contains(&record));
    assert!(node
        .ok(&["record", "verify", &record])
        .contains("valid signature"));
    assert!(node
        .fails(&["record", "verify", &content])
        .contains(&content));
}

fn licence_rules_refuse_incompatible_adaptations_and_add_nothing(mode: Mode) {
    let node = Node::init_in(mode);
    node.ok(&["key", "gen", "school"]);
    let (_, sa_parent) = publish_file(
        &node,
        "a.md",
        "original",
        &["--title", "Original", "--license", "CC-BY-SA-4.0"],
    );
    let (_, nd_parent) = publish_file(
        &node,
        "nd.md",
        "no derivatives",
        &["--title", "Fixed text", "--license", "CC-BY-ND-4.0"],
    );

    let child = node.write("child.md", b"adapted").display().to_string();
    let base = ["add", child.as_str(), "--title", "Adapted", "--author", "T"];
    let refused = node.fails(
        &[
            &base[..],
            &["--license", "CC-BY-4.0", "--based-on", &sa_parent],
        ]
        .concat(),
    );
    assert!(
        refused.contains("Original")
            && refused.contains(&sa_parent)
            && refused.contains("ShareAlike"),
        "{refused}"
    );
    let refused = node.fails(
        &[
            &base[..],
            &["--license", "CC-BY-ND-4.0", "--based-on", &nd_parent],
        ]
        .concat(),
    );
    assert!(refused.contains("Fixed text"), "{refused}");
    assert!(!node
        .ok(&["pin", "ls"])
        .contains(&node.ok(&["add", "-Q", "-n", &child]).trim().to_string()));

    let (_, adapted) = publish_file(
        &node,
        "child2.md",
        "adapted",
        &[
            "--title",
            "Adaptation",
            "--license",
            "CC-BY-SA-4.0",
            "--based-on",
            &sa_parent,
            "--changes",
            "translated to Swahili",
        ],
    );
    let tree = node.ok(&["provenance", &adapted]);
    assert!(
        tree.contains(&sa_parent) && tree.contains("translated to Swahili"),
        "{tree}"
    );
    let shown = node.ok(&["record", "show", &adapted]);
    assert!(shown.contains("adapted from"), "{shown}");
    assert!(node
        .fails(&[
            "add",
            &child,
            "--title",
            "x",
            "--author",
            "y",
            "--license",
            "MIT"
        ])
        .contains("MIT"));
}

fn a_collection_travels_on_a_car_and_keeps_its_rules(mode: Mode) {
    let publisher = Node::init_in(mode);
    publisher.ok(&["key", "gen", "ministry"]);
    let (_, first) = publisher_file(&publisher, "one.md", "Lesson one");
    let (_, second) = publisher_file(&publisher, "two.md", "Lesson two");
    publisher.ok(&["collection", "create", "grade-9-biology"]);
    publisher.ok(&[
        "collection",
        "add",
        "grade-9-biology",
        &first,
        "--path",
        "week-1/one.md",
    ]);
    let id = publisher
        .ok(&["collection", "publish", "grade-9-biology"])
        .trim()
        .to_string();
    assert!(
        id.starts_with("z6Mk") && id.ends_with("/grade-9-biology"),
        "{id}"
    );
    let v1 = publisher.path("v1.car");
    publisher.ok(&["export", &id, "-o", &v1]);
    publisher.ok(&["collection", "add", "grade-9-biology", &second]);
    publisher.ok(&["collection", "publish", "grade-9-biology"]);
    let v2 = publisher.path("v2.car");
    publisher.ok(&["export", &id, "-o", &v2]);
    let history = publisher.ok(&["collection", "history", &id]);
    assert_eq!(history.lines().count(), 2, "{history}");

    let school = Node::init_in(mode);
    let imported = school.ok(&["import", &v2]);
    assert!(
        imported.contains("version 2") && imported.contains("not trusted"),
        "{imported}"
    );
    let shown = school.ok(&["collection", "show", &id]);
    assert!(
        shown.contains("UNTRUSTED") && shown.contains("entries     2"),
        "{shown}"
    );
    assert!(shown.contains("week-1/one.md"), "{shown}");
    assert_eq!(
        school.ok(&["collection", "history", &id]).lines().count(),
        2
    );
    // The older version is a replay now: refused, nothing changes.
    let replay = school.fails(&["import", &v1]);
    assert!(
        replay.contains("version 1") && replay.contains("older"),
        "{replay}"
    );
    assert!(school
        .ok(&["collection", "show", &id])
        .contains("version     2"));

    school.ok(&["trust", "add", &id]);
    assert!(school
        .ok(&["collection", "show", &id])
        .contains("(trusted)"));
    assert!(school.ok(&["trust", "list"]).starts_with("did:key:z6Mk"));

    // gc keeps everything a collection needs; verify stays clean.
    school.ok(&["gc"]);
    assert!(school.ok(&["verify"]).contains("all good"));
    assert!(school
        .ok(&["collection", "show", &id])
        .contains("entries     2"));
    let record_content = school.ok(&["record", "show", &first]);
    let content = record_content
        .lines()
        .find(|l| l.starts_with("content"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    assert_eq!(school.ok(&["cat", content]), "Lesson one");
}

fn publisher_file(node: &Node, name: &str, text: &str) -> (String, String) {
    publish_file(
        node,
        name,
        text,
        &["--title", name, "--license", "CC-BY-4.0"],
    )
}

fn two_different_versions_with_the_same_seq_are_an_equivocation(mode: Mode) {
    let publisher = Node::init_in(mode);
    publisher.ok(&["key", "gen", "k"]);
    let (_, a) = publisher_file(&publisher, "a.md", "a");
    let (_, b) = publisher_file(&publisher, "b.md", "b");
    publisher.ok(&["collection", "create", "c"]);
    publisher.ok(&["collection", "add", "c", &a]);
    let id = publisher
        .ok(&["collection", "publish", "c"])
        .trim()
        .to_string();

    // The same key in a copied repository signs a different version 2.
    let twin_repo = publisher.work.join("twin");
    publisher.with_daemon_stopped(|| copy_dir(&publisher.repo, &twin_repo));
    publisher.ok(&["collection", "add", "c", &b]);
    publisher.ok(&["collection", "publish", "c"]);
    publisher.ok(&["export", &id, "-o", &publisher.path("honest.car")]);
    let twin =
        |args: &[&str]| publisher.ok(&[args, &["--repo", twin_repo.to_str().unwrap()]].concat());
    twin(&["collection", "rm", "c", &a]);
    twin(&["collection", "add", "c", &b]);
    twin(&["collection", "publish", "c"]);
    twin(&["export", &id, "-o", &publisher.path("forked.car")]);

    let school = Node::init_in(mode);
    school.ok(&["import", &publisher.path("honest.car")]);
    let err = school.fails(&["import", &publisher.path("forked.car")]);
    assert!(err.to_lowercase().contains("equivocation"), "{err}");
    assert!(
        school.ok(&["collection", "show", &id]).contains(&a),
        "the first version seen stays"
    );
}

fn a_retracted_record_is_hidden_everywhere_it_travels(mode: Mode) {
    let publisher = Node::init_in(mode);
    publisher.ok(&["key", "gen", "k"]);
    let (_, kept) = publisher_file(&publisher, "kept.md", "kept");
    let (_, taken_down) = publisher_file(&publisher, "takedown.md", "licence problem");
    publisher.ok(&["collection", "create", "c"]);
    publisher.ok(&["collection", "add", "c", &kept, &taken_down]);
    let id = publisher
        .ok(&["collection", "publish", "c"])
        .trim()
        .to_string();
    publisher.ok(&[
        "record",
        "retract",
        &taken_down,
        "--reason",
        "rights holder asked",
    ]);
    let shown = publisher.ok(&["collection", "show", &id]);
    assert!(
        !shown.contains(&taken_down) && shown.contains("1 entries hidden"),
        "{shown}"
    );
    assert_eq!(
        publisher
            .run(&["record", "verify", &taken_down])
            .status
            .code(),
        Some(1)
    );

    let car = publisher.path("c.car");
    publisher.ok(&["export", &id, "-o", &car]);
    let school = Node::init_in(mode);
    let imported = school.ok(&["import", &car]);
    assert!(imported.contains("1 retractions"), "{imported}");
    let shown = school.ok(&["collection", "show", &id]);
    assert!(
        shown.contains(&kept) && !shown.contains(&taken_down),
        "{shown}"
    );
    assert!(school.ok(&["verify"]).contains("all good"));

    // The publisher's gc lets the taken-down content go, keeps the rest, and the
    // collection still exports and imports.
    let gc = publisher.ok(&["gc"]);
    assert!(gc.contains("removed 1 blocks"), "{gc}");
    assert!(publisher.ok(&["verify"]).contains("all good"));
    publisher.ok(&["export", &id, "-o", &publisher.path("after-gc.car")]);
    Node::init_in(mode).ok(&["import", &publisher.path("after-gc.car")]);
}

fn a_key_file_readable_by_others_is_refused(mode: Mode) {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::init_in(mode);
    node.ok(&["key", "gen", "k"]);
    let key_file = node.repo.join("keys/k.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = node.write("x.md", b"x").display().to_string();
    let err = node.fails(&[
        "add",
        &path,
        "--title",
        "X",
        "--license",
        "CC0-1.0",
        "--author",
        "A",
    ]);
    assert!(err.contains("chmod 600"), "{err}");
    let exported = node.path("moved.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    node.ok(&["key", "export", "k", "-o", &exported]);
    let other = Node::init_in(mode);
    let imported = other.ok(&["key", "import", &exported]);
    let did = node
        .ok(&["key", "list"])
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(imported.trim(), format!("moved {did}"));
}

fn a_collection_car_carries_its_entries_not_the_works_they_adapt(mode: Mode) {
    let publisher = Node::init_in(mode);
    publisher.ok(&["key", "gen", "k"]);
    let (parent_content, parent) = publisher_file(&publisher, "original.md", "the original lesson");
    let (_, child) = publish_file(
        &publisher,
        "adapted.md",
        "the adapted lesson",
        &[
            "--title",
            "Adapted",
            "--license",
            "CC-BY-4.0",
            "--based-on",
            &parent,
            "--changes",
            "shortened",
        ],
    );
    publisher.ok(&["collection", "create", "c"]);
    publisher.ok(&["collection", "add", "c", &child]);
    let id = publisher
        .ok(&["collection", "publish", "c"])
        .trim()
        .to_string();
    let car = publisher.path("c.car");
    publisher.ok(&["export", &id, "-o", &car]);

    let school = Node::init_in(mode);
    assert!(school.ok(&["import", &car]).contains("1 records"));
    assert!(school.ok(&["collection", "show", &id]).contains("Adapted"));
    school.fails(&["cat", &parent_content]);
    let tree = school.run(&["provenance", &child]);
    assert!(
        String::from_utf8_lossy(&tree.stdout).contains(&parent),
        "the parent is named, not shipped"
    );
}

in_both_modes!(
    a_signed_record_shows_verifies_and_attributes,
    licence_rules_refuse_incompatible_adaptations_and_add_nothing,
    a_collection_travels_on_a_car_and_keeps_its_rules,
    two_different_versions_with_the_same_seq_are_an_equivocation,
    a_retracted_record_is_hidden_everywhere_it_travels,
    a_key_file_readable_by_others_is_refused,
    a_collection_car_carries_its_entries_not_the_works_they_adapt,
);
