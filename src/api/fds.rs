//! Handing open files to the daemon over its Unix socket (SCM_RIGHTS), so that `add` and
//! `import` need no copy of the bytes through the socket, and the daemon no permission
//! on the user's paths: it reads through the descriptor the command line opened.
//!
//! A hand-over is its own short connection: the client sends [`HANDOFF_MAGIC`] with the
//! descriptors attached; the daemon answers one line, a token, and closes. A later
//! request names the token to use the files. Tokens are single use, expire, and are
//! bounded in number, so a client that hands over and never comes back costs little.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The first bytes of a hand-over connection. It starts with a zero byte, which no HTTP
/// request does, so the daemon tells the two apart on one socket.
pub const HANDOFF_MAGIC: &[u8; 16] = b"\0oermesh-fds-v1\n";

/// Descriptors one hand-over may carry.
pub const MAX_FDS_PER_HANDOFF: usize = 16;
/// Hand-overs waiting to be used; beyond this the daemon refuses, and the client sends
/// the bytes instead.
const MAX_WAITING: usize = 1024;
/// A token not used within this time is dropped with its descriptors.
const TOKEN_LIFETIME: Duration = Duration::from_secs(120);
/// How long the daemon waits for a hand-over's bytes once the connection has opened.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `fds` to the daemon listening on `socket`; returns the token that names them.
pub fn hand_over(socket: &Path, fds: &[BorrowedFd<'_>]) -> io::Result<String> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(HANDOFF_TIMEOUT))?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload = [IoSlice::new(HANDOFF_MAGIC)];
    let control = [ControlMessage::ScmRights(&raw)];
    let sent = sendmsg::<()>(
        stream.as_raw_fd(),
        &payload,
        &control,
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    if sent != HANDOFF_MAGIC.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the hand-over was cut short",
        ));
    }
    let mut answer = String::new();
    (&stream).take(256).read_to_string(&mut answer)?;
    let answer = answer.trim_end();
    match answer.strip_prefix("token ") {
        Some(token) => Ok(token.to_string()),
        None => Err(io::Error::other(format!(
            "the daemon refused the files: {answer}"
        ))),
    }
}

/// Receives one hand-over on a connection whose first byte was zero, registers the
/// descriptors and answers with their token. Blocking: run it off the async threads.
pub fn receive(mut stream: UnixStream, registry: &FdRegistry) -> io::Result<()> {
    stream.set_read_timeout(Some(HANDOFF_TIMEOUT))?;
    let mut magic = [0u8; HANDOFF_MAGIC.len()];
    let mut control = nix::cmsg_space!([RawFd; MAX_FDS_PER_HANDOFF]);
    let (bytes, fds) = {
        let mut buffers = [IoSliceMut::new(&mut magic)];
        let message = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut buffers,
            Some(&mut control),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for cmsg in message.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel just installed these descriptors in this process
                // for us; nothing else owns them.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (message.bytes, fds)
    };
    let answer = if bytes != HANDOFF_MAGIC.len() || &magic != HANDOFF_MAGIC {
        "error not an oermesh hand-over".to_string()
    } else if fds.is_empty() {
        "error no descriptors arrived".to_string()
    } else {
        match registry.insert(fds) {
            Some(token) => format!("token {token}"),
            None => "error too many hand-overs are waiting".to_string(),
        }
    };
    stream.write_all(answer.as_bytes())?;
    stream.write_all(b"\n")
}

/// Descriptors handed over and not yet used, by token.
#[derive(Default)]
pub struct FdRegistry {
    waiting: Mutex<HashMap<String, (Instant, Vec<OwnedFd>)>>,
}

impl FdRegistry {
    /// Keeps `fds` under a fresh token; `None` when too many are waiting.
    pub fn insert(&self, fds: Vec<OwnedFd>) -> Option<String> {
        let mut waiting = self.lock();
        waiting.retain(|_, (at, _)| at.elapsed() < TOKEN_LIFETIME);
        if waiting.len() >= MAX_WAITING {
            return None;
        }
        let mut seed = [0u8; 16];
        getrandom::getrandom(&mut seed).ok()?;
        let token: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        waiting.insert(token.clone(), (Instant::now(), fds));
        Some(token)
    }

    /// The descriptors of `token`, once.
    pub fn take(&self, token: &str) -> Option<Vec<OwnedFd>> {
        let (at, fds) = self.lock().remove(token)?;
        (at.elapsed() < TOKEN_LIFETIME).then_some(fds)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Vec<OwnedFd>)>> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The one descriptor of `token` as a file open for reading, checked to be a regular file.
pub fn take_readable_file(registry: &FdRegistry, token: &str) -> Result<std::fs::File, String> {
    let mut fds = registry.take(token).ok_or_else(|| {
        format!("no handed-over file under token {token:?} (used, expired or unknown)")
    })?;
    if fds.len() != 1 {
        return Err(format!(
            "token {token:?} names {} files, not one",
            fds.len()
        ));
    }
    let fd = fds.remove(0);
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| e.to_string())?;
    let mode = nix::fcntl::OFlag::from_bits_truncate(flags) & nix::fcntl::OFlag::O_ACCMODE;
    if mode == nix::fcntl::OFlag::O_WRONLY {
        return Err("the handed-over file is not open for reading".into());
    }
    let file = std::fs::File::from(fd);
    let metadata = file.metadata().map_err(|e| e.to_string())?;
    if !metadata.is_file() {
        return Err("the handed-over descriptor is not a regular file".into());
    }
    Ok(file)
}
