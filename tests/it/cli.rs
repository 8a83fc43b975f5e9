//! The `oermesh` binary end to end, on real repositories in temp dirs.

use std::cell::RefCell;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::gen::generated_bytes;

/// Whether commands open the repository themselves or go through a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Direct,
    Daemon,
}

/// How long a test waits for a daemon to come up or go down.
const DAEMON_DEADLINE: Duration = Duration::from_secs(60);

/// A repository and a work folder in a temp dir, and in [`Mode::Daemon`] the daemon
/// process that holds the repository.
pub struct Node {
    dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub work: PathBuf,
    mode: Mode,
    daemon: RefCell<Option<Child>>,
}

impl Node {
    pub fn new() -> Node {
        Node::new_in(Mode::Direct)
    }

    pub fn new_in(mode: Mode) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        Node {
            dir,
            repo,
            work,
            mode,
            daemon: RefCell::new(None),
        }
    }

    pub fn init() -> Node {
        Node::init_in(Mode::Direct)
    }

    /// A fresh repository; in [`Mode::Daemon`] with its daemon running.
    pub fn init_in(mode: Mode) -> Node {
        let node = Node::new_in(mode);
        node.ok(&["init"]);
        node.start_daemon_in_daemon_mode();
        node
    }

    /// Starts the daemon when the node is in [`Mode::Daemon`].
    pub fn start_daemon_in_daemon_mode(&self) {
        if self.mode == Mode::Daemon {
            self.start_daemon();
        }
    }

    /// Starts `oermesh daemon` on the repository (loopback only, no mDNS) and waits until
    /// its API answers.
    pub fn start_daemon(&self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_oermesh"));
        command.args([
            "daemon",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ]);
        self.spawn_daemon(command);
    }

    /// Starts `oermesh daemon` with nothing but the repository's config, inside the
    /// network namespace `netns`, and waits until its API answers. The API's Unix
    /// socket is a file, so the commands run here reach it from outside the namespace.
    pub fn start_daemon_in_netns(&self, netns: &str) {
        let mut command = Command::new(crate::tools::ip());
        command
            .args(["netns", "exec", netns])
            .arg(env!("CARGO_BIN_EXE_oermesh"))
            .arg("daemon");
        self.spawn_daemon(command);
    }

    /// Runs `command` (a daemon, its process replacing any wrapper) on the repository
    /// and waits until its API answers.
    fn spawn_daemon(&self, mut command: Command) {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        let child = command
            .env("OERMESH_REPO", &self.repo)
            .env_remove("OERMESH_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        *self.daemon.borrow_mut() = Some(child);
        let socket = self.repo.join("api.sock");
        let deadline = Instant::now() + DAEMON_DEADLINE;
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            self.assert_daemon_alive();
            assert!(
                Instant::now() < deadline,
                "the daemon's API did not come up within {DAEMON_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon with SIGTERM, as a service manager would, and waits for it.
    pub fn stop_daemon(&self) {
        let Some(mut child) = self.daemon.borrow_mut().take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + DAEMON_DEADLINE;
        loop {
            match child.try_wait().unwrap() {
                Some(status) => {
                    assert!(
                        status.success(),
                        "the daemon stopped with {status}: {}",
                        self.daemon_log()
                    );
                    return;
                }
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    panic!("the daemon did not stop within {DAEMON_DEADLINE:?}");
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// Kills the daemon with SIGKILL: no clean shutdown, its socket file stays.
    pub fn kill_daemon(&self) {
        if let Some(mut child) = self.daemon.borrow_mut().take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The daemon's browser-facing address (`host:port`), from its start-up line.
    pub fn web_address(&self) -> String {
        let log = self.daemon_log();
        log.split("web page http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no web page address in the daemon's output: {log}"))
            .to_string()
    }

    /// Runs `work` with the daemon stopped (copying a repository, say), then starts it
    /// again; in [`Mode::Direct`] just runs it.
    pub fn with_daemon_stopped<T>(&self, work: impl FnOnce() -> T) -> T {
        let running = self.daemon.borrow().is_some();
        self.stop_daemon();
        let result = work();
        if running {
            self.start_daemon();
        }
        result
    }

    /// The daemon's peer-to-peer address with its peer id, from its start-up line.
    pub fn peer_address(&self) -> libp2p::Multiaddr {
        // The API can answer a moment before the line is written.
        let deadline = Instant::now() + DAEMON_DEADLINE;
        while !self.daemon_log().contains(", web page ") && Instant::now() < deadline {
            self.assert_daemon_alive();
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = self.daemon_log();
        let field = |after: &str| {
            log.split(after)
                .nth(1)
                .and_then(|rest| rest.split([',', ' ']).next())
                .unwrap_or_else(|| panic!("no `{after}` in the daemon's output: {log}"))
                .to_string()
        };
        let addr: libp2p::Multiaddr = field("listening on ").parse().unwrap();
        let peer: libp2p::PeerId = field(", peer ").parse().unwrap();
        addr.with(libp2p::multiaddr::Protocol::P2p(peer))
    }

    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.borrow().as_ref().map(Child::id)
    }

    /// Starts the daemon with `peers` as its static peers (written to config.toml).
    pub fn start_daemon_with_peers(&self, peers: &[libp2p::Multiaddr]) {
        let config = self.repo.join("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let list: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
        let text = text.replace(
            "static_peers = []",
            &format!("static_peers = [{}]", list.join(", ")),
        );
        std::fs::write(&config, text).unwrap();
        self.start_daemon();
    }

    fn assert_daemon_alive(&self) {
        if let Some(child) = self.daemon.borrow_mut().as_mut() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the daemon exited with {status}: {}", self.daemon_log());
            }
        }
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let output = Command::new(env!("CARGO_BIN_EXE_oermesh"))
            .args(args)
            .env("OERMESH_REPO", &self.repo)
            .env_remove("OERMESH_LOG")
            .current_dir(&self.work)
            .output()
            .unwrap();
        // Commands must have gone through the daemon, not around a dead one.
        self.assert_daemon_alive();
        output
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

    /// Runs a command with its standard error on a pseudo-terminal (made by Python's
    /// `pty`), as a person at a terminal would; standard output goes to `stdout_file`.
    /// Returns what the terminal received and whether the command succeeded.
    pub fn run_on_terminal(&self, stdout_file: &Path, args: &[&str]) -> (String, bool) {
        const ON_TERMINAL: &str = r#"
import os, pty, subprocess, sys
master, slave = pty.openpty()
with open(sys.argv[1], "wb") as out:
    child = subprocess.Popen(sys.argv[2:], stdout=out, stderr=slave)
os.close(slave)
seen = b""
while True:
    try:
        chunk = os.read(master, 65536)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
sys.stdout.buffer.write(seen)
sys.exit(child.wait())
"#;
        let output = Command::new("python3")
            .args(["-c", ON_TERMINAL])
            .arg(stdout_file)
            .arg(env!("CARGO_BIN_EXE_oermesh"))
            .args(args)
            .env("OERMESH_REPO", &self.repo)
            .env("TERM", "xterm")
            .env_remove("OERMESH_LOG")
            .current_dir(&self.work)
            .output()
            .unwrap();
        self.assert_daemon_alive();
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            output.status.success(),
        )
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

fn add_cat_ls_get_round_trip_with_reference_cids(mode: Mode) {
    let node = Node::init_in(mode);
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

fn export_and_import_carry_a_tree_between_repositories(mode: Mode) {
    let school_a = Node::init_in(mode);
    school_a.write("unit/a.txt", &generated_bytes(2_000_000, 1));
    school_a.write("unit/b.txt", b"b");
    let root = school_a
        .ok(&["add", "-r", "-Q", &school_a.path("unit")])
        .trim()
        .to_string();
    let car = school_a.path("unit.car");
    let out = school_a.ok(&["export", &root, "-o", &car]);
    assert!(out.contains("exported"), "{out}");

    let school_b = Node::init_in(mode);
    let imported = school_b.ok(&["import", &car]);
    assert!(imported.contains(&root), "{imported}");
    assert_eq!(school_b.ok(&["cat", &format!("{root}/b.txt")]), "b");
    assert!(school_b.ok(&["pin", "ls"]).contains(&root));
    assert!(school_b.run(&["verify"]).status.success());
}

fn a_damaged_car_imports_nothing(mode: Mode) {
    let source = Node::init_in(mode);
    source.write("unit/a.bin", &generated_bytes(1_500_000, 5));
    let root = source
        .ok(&["add", "-r", "-Q", &source.path("unit")])
        .trim()
        .to_string();
    let car_path = source.path("unit.car");
    source.ok(&["export", &root, "-o", &car_path]);
    let car = std::fs::read(&car_path).unwrap();

    let target = Node::init_in(mode);
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

fn corruption_on_disk_is_named_and_never_served(mode: Mode) {
    let node = Node::init_in(mode);
    let data = generated_bytes(1024 * 1024 * 2 + 5, 3);
    node.write("f.bin", &data);
    let root = node
        .ok(&["add", "-Q", &node.path("f.bin")])
        .trim()
        .to_string();
    assert!(node.ok(&["verify"]).contains("all good"));

    // Flip one bit in the second leaf's file: the failure comes in the middle of the
    // stream, after a whole leaf has gone out.
    let bad_leaf = cid::Cid::new_v1(
        0x55,
        oermesh::block::sha256_multihash(&data[1 << 20..2 << 20]),
    );
    let path = block_file(&node.repo, &bad_leaf.to_string());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4242] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let cat = node.run(&["cat", &root]);
    assert!(!cat.status.success());
    assert!(String::from_utf8_lossy(&cat.stderr).contains(&bad_leaf.to_string()));
    assert!(cat.stdout.len() < data.len(), "no complete-looking output");
    let verify = node.run(&["verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&verify.stdout).contains(&format!("corrupt block {bad_leaf}")));
    node.fails(&["export", &root, "-o", &node.path("out.car")]);
    assert!(
        !node.work.join("out.car").exists(),
        "no partial CAR is left behind"
    );
}

fn pin_rm_and_gc_free_the_space(mode: Mode) {
    let node = Node::init_in(mode);
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

fn bad_input_gets_one_clear_line(mode: Mode) {
    let node = Node::init_in(mode);
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

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.borrow_mut().take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

in_both_modes!(
    add_cat_ls_get_round_trip_with_reference_cids,
    export_and_import_carry_a_tree_between_repositories,
    a_damaged_car_imports_nothing,
    corruption_on_disk_is_named_and_never_served,
    pin_rm_and_gc_free_the_space,
    bad_input_gets_one_clear_line,
    files_from_any_file_system_are_stored_alike,
    get_and_cat_draw_a_bar_only_on_a_terminal,
);

/// Scripts and pipes get exactly the bytes they asked for; a person at a terminal also
/// sees bytes, rate and time left on standard error.
fn get_and_cat_draw_a_bar_only_on_a_terminal(mode: Mode) {
    let node = Node::init_in(mode);
    let big = generated_bytes(6 * 1024 * 1024 + 5, 7);
    node.write("lesson/video.bin", &big);
    node.write("lesson/notes.txt", b"notes");
    let file = node.ok(&["add", "-Q", &node.path("lesson/video.bin")]);
    let folder = node.ok(&["add", "-r", "-Q", &node.path("lesson")]);
    let (file, folder) = (file.trim(), folder.trim());

    for (cid, dest) in [(file, "piped.bin"), (folder, "piped")] {
        let out = node.run(&["get", cid, "-o", &node.path(dest)]);
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("saved {cid} to {}\n", node.path(dest))
        );
        assert!(out.stderr.is_empty(), "no bar without a terminal");
    }
    let cat = node.run(&["cat", file]);
    assert!(cat.status.success() && cat.stderr.is_empty());
    assert!(cat.stdout == big);

    for (cid, dest) in [(file, "seen.bin"), (folder, "seen")] {
        let stdout = node.work.join(format!("{dest}.out"));
        let (terminal, ok) = node.run_on_terminal(&stdout, &["get", cid, "-o", &node.path(dest)]);
        assert!(ok, "{terminal}");
        assert!(
            terminal.contains("eta") && terminal.contains("MiB"),
            "{terminal}"
        );
        assert_eq!(
            std::fs::read_to_string(&stdout).unwrap(),
            format!("saved {cid} to {}\n", node.path(dest)),
            "the bar stays off standard output"
        );
    }
    assert!(std::fs::read(node.work.join("seen.bin")).unwrap() == big);
    assert!(std::fs::read(node.work.join("seen/video.bin")).unwrap() == big);
    let stdout = node.work.join("cat.out");
    let (terminal, ok) = node.run_on_terminal(&stdout, &["cat", file]);
    assert!(ok && terminal.contains("eta"), "{terminal}");
    assert!(std::fs::read(&stdout).unwrap() == big);
}

/// A file added from the repository's own file system is copied into the store inside
/// the kernel; one from another (tmpfs) is written out. Both are stored alike.
fn files_from_any_file_system_are_stored_alike(mode: Mode) {
    let node = Node::init_in(mode);
    let tmpfs = tempfile::tempdir_in("/dev/shm").unwrap();
    let here = node.write("here.bin", &generated_bytes(5 * 1024 * 1024 + 3, 41));
    let elsewhere = tmpfs.path().join("elsewhere.bin");
    std::fs::write(&elsewhere, generated_bytes(3 * 1024 * 1024 + 5, 42)).unwrap();
    for path in [&here, &elsewhere] {
        let path = path.to_str().unwrap();
        let expected = node.ok(&["add", "-Q", "--only-hash", path]);
        let cid = node.ok(&["add", "-Q", path]);
        assert_eq!(cid, expected);
        assert!(node.run(&["cat", cid.trim()]).stdout == std::fs::read(path).unwrap());
    }
    assert!(node.ok(&["verify"]).contains("all good"));
}
