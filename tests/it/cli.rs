//! The `oermesh` binary end to end, on real repositories in temp dirs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::gen::generated_bytes;

pub struct Node {
    _dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub work: PathBuf,
}

impl Node {
    pub fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        Node {
            _dir: dir,
            repo,
            work,
        }
    }

    pub fn init() -> Node {
        let node = Node::new();
        node.ok(&["init"]);
        node
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_oermesh"))
            .args(args)
            .env("OERMESH_REPO", &self.repo)
            .env_remove("OERMESH_LOG")
            .current_dir(&self.work)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "oermesh {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail; returns its one-line error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "oermesh {args:?} should have failed");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one clear line, got: {stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        stderr
    }

    pub fn write(&self, relative: &str, bytes: &[u8]) -> PathBuf {
        let path = self.work.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        path
    }

    pub fn path(&self, relative: &str) -> String {
        self.work.join(relative).display().to_string()
    }
}

fn block_file(repo: &Path, cid: &str) -> PathBuf {
    let cid = cid::Cid::try_from(cid).unwrap();
    let name = cid::multibase::encode(cid::multibase::Base::Base32Lower, cid.hash().to_bytes())
        [1..]
        .to_string();
    repo.join("blocks")
        .join(&name[name.len() - 3..name.len() - 1])
        .join(name)
}

#[test]
fn init_creates_a_documented_repository_with_a_private_key() {
    let node = Node::new();
    let missing = node.fails(&["stat"]);
    assert!(missing.contains("oermesh init"), "{missing}");
    node.ok(&["init"]);
    let mode = std::fs::metadata(node.repo.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let config = std::fs::read_to_string(node.repo.join("config.toml")).unwrap();
    assert!(
        config.contains("cache_mb") && config.contains("# "),
        "{config}"
    );
    assert!(node.fails(&["init"]).contains("already"));
    // --repo works after the subcommand too.
    let other = node.work.join("other");
    let out = node.ok(&["init", "--repo", other.to_str().unwrap()]);
    assert!(out.contains(other.to_str().unwrap()));
}

#[test]
fn add_cat_ls_get_round_trip_with_reference_cids() {
    let node = Node::init();
    let hello = node.write("hello.txt", b"hello world");
    let out = node.ok(&["add", hello.to_str().unwrap()]);
    assert_eq!(
        out,
        "added bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e hello.txt\n"
    );
    let v0 = node.ok(&[
        "add",
        "-Q",
        "--profile",
        "unixfs-v0-2015",
        hello.to_str().unwrap(),
    ]);
    assert_eq!(v0.trim(), "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD");

    let big = generated_bytes(3 * 1024 * 1024 + 17, 99);
    node.write("lesson/video.bin", &big);
    node.write("lesson/Ελληνικά/σημειώσεις.md", "Καλημέρα".as_bytes());
    std::fs::create_dir_all(node.work.join("lesson/empty")).unwrap();
    let listing = node.ok(&["add", "-r", &node.path("lesson")]);
    let root = listing
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        listing.contains("lesson/Ελληνικά/σημειώσεις.md"),
        "{listing}"
    );
    let quiet = node.ok(&["add", "-r", "-Q", &node.path("lesson")]);
    assert_eq!(quiet.trim(), root);
    let only_hash = node.ok(&["add", "-r", "-Q", "-n", &node.path("lesson")]);
    assert_eq!(only_hash.trim(), root);

    let ls = node.ok(&["ls", &root]);
    let names: Vec<&str> = ls
        .lines()
        .map(|line| line.split_whitespace().last().unwrap())
        .collect();
    assert_eq!(names, vec!["empty/", "video.bin", "Ελληνικά/"]);
    assert!(ls.contains(&(big.len()).to_string()), "{ls}");

    let cat = node.run(&["cat", &format!("{root}/video.bin")]);
    assert!(cat.status.success());
    assert!(cat.stdout == big, "cat returns the exact bytes");
    let greek = node.ok(&["cat", &format!("/ipfs/{root}/Ελληνικά/σημειώσεις.md")]);
    assert_eq!(greek, "Καλημέρα");

    node.ok(&["get", &root, "-o", &node.path("copy")]);
    assert_eq!(
        std::fs::read(node.work.join("copy/video.bin")).unwrap(),
        big
    );
    assert!(node.work.join("copy/empty").is_dir());
    node.ok(&["get", &format!("{root}/Ελληνικά")]);
    assert_eq!(
        std::fs::read_to_string(node.work.join("Ελληνικά/σημειώσεις.md")).unwrap(),
        "Καλημέρα"
    );
    assert!(node
        .fails(&["cat", &format!("{root}/nope.txt")])
        .contains("nope.txt"));
}

#[test]
fn export_and_import_carry_a_tree_between_repositories() {
    let school_a = Node::init();
    school_a.write("unit/a.txt", &generated_bytes(2_000_000, 1));
    school_a.write("unit/b.txt", b"b");
    let root = school_a
        .ok(&["add", "-r", "-Q", &school_a.path("unit")])
        .trim()
        .to_string();
    let car = school_a.path("unit.car");
    let out = school_a.ok(&["export", &root, "-o", &car]);
    assert!(out.contains("exported"), "{out}");

    let school_b = Node::init();
    let imported = school_b.ok(&["import", &car]);
    assert!(imported.contains(&root), "{imported}");
    assert_eq!(school_b.ok(&["cat", &format!("{root}/b.txt")]), "b");
    assert!(school_b.ok(&["pin", "ls"]).contains(&root));
    assert!(school_b.run(&["verify"]).status.success());
}

#[test]
fn a_damaged_car_imports_nothing() {
    let source = Node::init();
    source.write("unit/a.bin", &generated_bytes(1_500_000, 5));
    let root = source
        .ok(&["add", "-r", "-Q", &source.path("unit")])
        .trim()
        .to_string();
    let car_path = source.path("unit.car");
    source.ok(&["export", &root, "-o", &car_path]);
    let car = std::fs::read(&car_path).unwrap();

    let target = Node::init();
    let mut flipped = car.clone();
    let at = flipped.len() - 1000;
    flipped[at] ^= 0x40;
    let flipped_path = target.write("flipped.car", &flipped);
    let err = target.fails(&["import", flipped_path.to_str().unwrap()]);
    assert!(
        err.contains("flipped.car") && err.contains("corrupt"),
        "{err}"
    );

    let truncated_path = target.write("truncated.car", &car[..car.len() / 2]);
    let err = target.fails(&["import", truncated_path.to_str().unwrap()]);
    assert!(err.contains("truncated.car"), "{err}");

    let garbage = target.write("garbage.car", b"this is not a car file");
    target.fails(&["import", garbage.to_str().unwrap()]);

    assert_eq!(target.ok(&["pin", "ls"]), "");
    assert!(target.run(&["verify"]).status.success());
    assert!(target.run(&["cat", &root]).status.code() != Some(0));
}

#[test]
fn corruption_on_disk_is_named_and_never_served() {
    let node = Node::init();
    let data = generated_bytes(1024 * 1024 * 2 + 5, 3);
    node.write("f.bin", &data);
    let root = node
        .ok(&["add", "-Q", &node.path("f.bin")])
        .trim()
        .to_string();
    assert!(node.ok(&["verify"]).contains("all good"));

    // Flip one bit in the first leaf's file.
    let first_leaf = cid::Cid::new_v1(0x55, oermesh::block::sha256_multihash(&data[..1 << 20]));
    let path = block_file(&node.repo, &first_leaf.to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4242] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let cat = node.run(&["cat", &root]);
    assert!(!cat.status.success());
    assert!(String::from_utf8_lossy(&cat.stderr).contains(&first_leaf.to_string()));
    let verify = node.run(&["verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains(&format!("corrupt block {first_leaf}"))
    );
    node.fails(&["export", &root, "-o", &node.path("out.car")]);
    assert!(
        !node.work.join("out.car").exists(),
        "no partial CAR is left behind"
    );
}

#[test]
fn pin_rm_and_gc_free_the_space() {
    let node = Node::init();
    node.write("f.bin", &generated_bytes(3_000_000, 8));
    let root = node
        .ok(&["add", "-Q", &node.path("f.bin")])
        .trim()
        .to_string();
    let kept = node
        .ok(&[
            "add",
            "-Q",
            &node.write("k.txt", b"keep").display().to_string(),
        ])
        .trim()
        .to_string();
    assert!(node.ok(&["gc"]).contains("removed 0 blocks"));
    node.ok(&["pin", "rm", &root]);
    let gc = node.ok(&["gc"]);
    assert!(gc.contains("removed 4 blocks"), "{gc}");
    assert!(gc.contains("2.9 MiB"), "{gc}");
    assert_eq!(node.ok(&["cat", &kept]), "keep");
    node.fails(&["cat", &root]);
    assert!(node
        .fails(&["pin", "add", &root])
        .contains("not in the store"));
}

#[test]
fn bad_input_gets_one_clear_line() {
    let node = Node::init();
    assert!(node.fails(&["cat", "not-a-cid"]).contains("not-a-cid"));
    assert!(node
        .fails(&["add", &node.path("missing.txt")])
        .contains("missing.txt"));
    std::fs::create_dir_all(node.work.join("dir")).unwrap();
    assert!(node.fails(&["add", &node.path("dir")]).contains("-r"));
    std::fs::create_dir_all(node.work.join("loop/inner")).unwrap();
    std::os::unix::fs::symlink(node.work.join("loop"), node.work.join("loop/inner/back")).unwrap();
    assert!(node
        .fails(&["add", "-r", &node.path("loop")])
        .contains("loop"));
    assert!(node.ok(&["verify"]).contains("all good"));
    assert_eq!(node.ok(&["pin", "ls"]), "");
}
