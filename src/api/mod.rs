//! The daemon's local API: JSON over HTTP on a Unix socket in the repository
//! (`REPO/api.sock`, mode 0600), and optionally on a TCP address with a bearer token.
//! Every endpoint runs one [`crate::node::Node`] method; [`client::ApiClient`] is the
//! other end, a [`crate::node::Service`] the command line uses when a daemon holds the
//! repository. Endpoints and formats are documented in docs/API.md.

pub mod client;
pub mod fds;
pub mod pins;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::node::{AddEvent, AddOptions, AddOutcome, ErrorCode, NodeError};

/// The socket's file name in the repository.
pub const SOCKET_NAME: &str = "api.sock";
/// The TCP API's bearer token, in the repository (mode 0600).
pub const TOKEN_NAME: &str = "api.token";
/// Every endpoint sits under this path.
pub const PREFIX: &str = "/api/v1";

/// Files at least this large are handed to the daemon as open descriptors when the
/// command line can (over the Unix socket); smaller ones travel in the request, where a
/// descriptor's round trip would cost more than the copy.
pub const FD_MIN_FILE_SIZE: u64 = 1024 * 1024;

/// The body of every error response, and of the `error` line of a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// The one line the command line prints after `error: `.
    pub message: String,
}

impl From<&NodeError> for ErrorBody {
    fn from(err: &NodeError) -> Self {
        ErrorBody {
            code: err.code(),
            message: crate::node::one_line(err),
        }
    }
}

impl From<ErrorBody> for NodeError {
    fn from(body: ErrorBody) -> Self {
        NodeError::Remote {
            code: body.code,
            message: body.message,
        }
    }
}

/// One line of an `add` request body. The first is `Options`; then entries, a folder
/// before what it holds; then `End`. A `File` line without `fd_token` is followed by
/// exactly `size` bytes of content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AddLine {
    Options(Box<AddOptions>),
    Dir {
        path: String,
    },
    File {
        path: String,
        size: u64,
        /// Where the bytes come from on the client's machine, for messages.
        #[serde(default)]
        source: String,
        /// The content is the open file handed over under this token (Unix socket only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fd_token: Option<String>,
    },
    End,
}

/// One line of an `add` response stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddReply {
    Event(AddEvent),
    Done(AddOutcome),
    Error(ErrorBody),
}

/// The last line of a framed response (`export`, `cat`), after the data frames: what the
/// work returned, or why it stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEnd<T> {
    Done(T),
    Error(ErrorBody),
}

/// An `add` request line is at most this long: a path of a few thousand bytes at most.
pub const MAX_ADD_LINE: usize = 64 * 1024;
/// Data frames of an `export` or `cat` response are at most this long.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// Arguments of the endpoints that take some; the same structs on both ends.
pub mod args {
    use cid::Cid;
    use serde::{Deserialize, Serialize};

    use crate::block::cid_text;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CidArg {
        #[serde(with = "cid_text")]
        pub cid: Cid,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NameArg {
        pub name: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct IdArg {
        pub id: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PublisherArg {
        pub publisher: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct KeyImportArg {
        pub name: String,
        pub key_file: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RetractArg {
        #[serde(with = "cid_text")]
        pub cid: Cid,
        pub reason: String,
        #[serde(default)]
        pub key: Option<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CollectionCreateArg {
        pub name: String,
        #[serde(default)]
        pub key: Option<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CollectionAddArg {
        pub name: String,
        pub cids: Vec<String>,
        #[serde(default)]
        pub path: Option<String>,
        #[serde(default)]
        pub title: Option<String>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CollectionRmArg {
        pub name: String,
        #[serde(with = "cid_text")]
        pub cid: Cid,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AddrArg {
        pub addr: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FollowArg {
        pub id: String,
        #[serde(default)]
        pub metadata_only: bool,
    }

    /// For endpoints that take nothing: an empty body or `{}`.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NoArg {}

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ImportQuery {
        /// The CAR is the file handed over under this token; otherwise it is the body.
        #[serde(default)]
        pub fd_token: Option<String>,
    }
}
