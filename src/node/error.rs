//! The one error type of the service layer, and its stable machine-readable codes.

use serde::{Deserialize, Serialize};

use crate::block::BlockError;
use crate::car::CarError;
use crate::exchange::FetchError;
use crate::keys::KeyError;
use crate::records::RecordError;
use crate::repo::RepoError;
use crate::store::StoreError;
use crate::transfer::TransferError;
use crate::unixfs::importer::ImportError;
use crate::unixfs::reader::ReadError;

/// What kind of failure an error is, for programs: the API sends it as `code`. The
/// names are part of the API and do not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A CID, path, name or option that is not valid.
    InvalidArgument,
    /// The thing named is not here (block, record, collection, key, pin).
    NotFound,
    /// Creating something that already exists.
    AlreadyExists,
    /// Stored bytes that do not match their CID.
    Corrupt,
    /// A record, head or retraction that does not verify, or a malformed one.
    InvalidSignedObject,
    /// Refused by the licence rules.
    LicenceConflict,
    /// An older or conflicting collection version (replay, equivocation).
    VersionConflict,
    /// A CAR file that is malformed or incomplete.
    InvalidCar,
    /// The repository is missing, held by another process, or its files are unusable.
    Repository,
    /// The request was not allowed (a missing or wrong token, a write on a read-only address).
    Forbidden,
    /// Reading or writing failed (disk full, permissions, a broken stream).
    Io,
    /// The daemon could not be reached or stopped answering.
    Unavailable,
    /// Anything else.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::InvalidSignedObject => "invalid_signed_object",
            ErrorCode::LicenceConflict => "licence_conflict",
            ErrorCode::VersionConflict => "version_conflict",
            ErrorCode::InvalidCar => "invalid_car",
            ErrorCode::Repository => "repository",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Io => "io",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the API answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument
            | ErrorCode::InvalidSignedObject
            | ErrorCode::LicenceConflict
            | ErrorCode::InvalidCar => 400,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists | ErrorCode::VersionConflict => 409,
            ErrorCode::Corrupt | ErrorCode::Repository | ErrorCode::Io | ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a user action failed. The message (with [`one_line`]) is what the command line
/// prints, the same whether the action ran here or in the daemon.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Repo(Box<RepoError>),
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error(transparent)]
    Block(Box<BlockError>),
    #[error(transparent)]
    Records(Box<RecordError>),
    #[error(transparent)]
    Key(Box<KeyError>),
    #[error(transparent)]
    Import(Box<ImportError>),
    #[error(transparent)]
    Read(Box<ReadError>),
    #[error(transparent)]
    Transfer(Box<TransferError>),
    #[error(transparent)]
    Car(Box<CarError>),
    #[error(transparent)]
    Fetch(Box<FetchError>),
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    /// An error the daemon reported, with its code and the line it would have printed.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
}

macro_rules! boxed_from {
    ($($variant:ident($error:ty)),* $(,)?) => {
        $(
            impl From<$error> for NodeError {
                fn from(err: $error) -> Self {
                    NodeError::$variant(Box::new(err))
                }
            }
        )*
    };
}

boxed_from!(
    Repo(RepoError),
    Store(StoreError),
    Block(BlockError),
    Records(RecordError),
    Key(KeyError),
    Import(ImportError),
    Read(ReadError),
    Transfer(TransferError),
    Car(CarError),
    Fetch(FetchError),
);

impl NodeError {
    pub fn invalid(message: impl Into<String>) -> NodeError {
        NodeError::Refused {
            code: ErrorCode::InvalidArgument,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> NodeError {
        NodeError::Refused {
            code: ErrorCode::NotFound,
            message: message.into(),
        }
    }

    pub fn refused(code: ErrorCode, message: impl Into<String>) -> NodeError {
        NodeError::Refused {
            code,
            message: message.into(),
        }
    }

    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::Refused { code, .. } | NodeError::Remote { code, .. } => *code,
            NodeError::Repo(err) => repo_code(err),
            NodeError::Store(err) => store_code(err),
            NodeError::Block(err) => block_code(err),
            NodeError::Records(err) => record_code(err),
            NodeError::Key(err) => key_code(err),
            NodeError::Import(err) => match err.as_ref() {
                ImportError::Store(err) => block_code(err),
                ImportError::Unreadable { .. } | ImportError::Input(_) => ErrorCode::Io,
                _ => ErrorCode::InvalidArgument,
            },
            NodeError::Read(err) => match err.as_ref() {
                ReadError::NotFound(_) | ReadError::NoSuchEntry { .. } => ErrorCode::NotFound,
                ReadError::Corrupt(_) => ErrorCode::Corrupt,
                ReadError::Block(err) => block_code(err),
                ReadError::Io(_) | ReadError::WritePath { .. } => ErrorCode::Io,
                ReadError::DestinationExists(_) => ErrorCode::AlreadyExists,
                _ => ErrorCode::InvalidArgument,
            },
            NodeError::Transfer(err) => match err.as_ref() {
                TransferError::Car(err) => car_code(err),
                TransferError::Store(err) => store_code(err),
                TransferError::Block(err) => block_code(err),
                TransferError::Records(err) => record_code(err),
                TransferError::Invalid { .. } => ErrorCode::InvalidSignedObject,
                TransferError::OlderVersion { .. } => ErrorCode::VersionConflict,
                TransferError::Incomplete { .. } | TransferError::Links(_) => ErrorCode::InvalidCar,
                TransferError::UnknownCollection(_) => ErrorCode::NotFound,
            },
            NodeError::Car(err) => car_code(err),
            NodeError::Fetch(err) => match err.as_ref() {
                FetchError::NotFound { .. } | FetchError::NoPeers { .. } => ErrorCode::NotFound,
                FetchError::Path(err) => match err {
                    ReadError::NotFound(_) | ReadError::NoSuchEntry { .. } => ErrorCode::NotFound,
                    _ => ErrorCode::InvalidArgument,
                },
                FetchError::Dag(_) | FetchError::Invalid(_) => ErrorCode::InvalidArgument,
                FetchError::Store(err) => store_code(err),
                FetchError::CorruptHere(_) => ErrorCode::Corrupt,
                FetchError::Stopped => ErrorCode::Unavailable,
            },
        }
    }
}

fn repo_code(err: &RepoError) -> ErrorCode {
    match err {
        RepoError::Store(err) => store_code(err),
        RepoError::Key(err) => key_code(err),
        RepoError::Records(err) => record_code(err),
        RepoError::Exists(_) => ErrorCode::AlreadyExists,
        _ => ErrorCode::Repository,
    }
}

fn store_code(err: &StoreError) -> ErrorCode {
    match err {
        StoreError::Block(err) => block_code(err),
        StoreError::Io { .. } => ErrorCode::Io,
        _ => ErrorCode::Repository,
    }
}

fn block_code(err: &BlockError) -> ErrorCode {
    match err {
        BlockError::NotFound(_) => ErrorCode::NotFound,
        BlockError::Corrupt(_) => ErrorCode::Corrupt,
        BlockError::UnsupportedHash { .. } | BlockError::TooLarge { .. } => {
            ErrorCode::InvalidArgument
        }
        BlockError::Io(_) => ErrorCode::Io,
        BlockError::Backend(_) => ErrorCode::Internal,
    }
}

fn car_code(err: &CarError) -> ErrorCode {
    match err {
        CarError::Block(err) => block_code(err),
        CarError::Io(_) => ErrorCode::Io,
        _ => ErrorCode::InvalidCar,
    }
}

fn key_code(err: &KeyError) -> ErrorCode {
    match err {
        KeyError::AlreadyExists(_) => ErrorCode::AlreadyExists,
        KeyError::NotFound(_) => ErrorCode::NotFound,
        KeyError::Io { .. } | KeyError::Random(_) => ErrorCode::Io,
        _ => ErrorCode::InvalidArgument,
    }
}

fn record_code(err: &RecordError) -> ErrorCode {
    match err {
        RecordError::Block(err) => block_code(err),
        RecordError::Store(_) | RecordError::DamagedState(_) => ErrorCode::Repository,
        RecordError::LicenceConflict(_) => ErrorCode::LicenceConflict,
        RecordError::Replay { .. } | RecordError::Equivocation(_) => ErrorCode::VersionConflict,
        RecordError::UnknownRecord(_)
        | RecordError::UnknownCollection(_)
        | RecordError::NoSuchDraft(_)
        | RecordError::ParentMissing(_) => ErrorCode::NotFound,
        RecordError::DraftExists(_) => ErrorCode::AlreadyExists,
        RecordError::BadSignature { .. }
        | RecordError::TooLarge { .. }
        | RecordError::MalformedCbor { .. }
        | RecordError::NotAMap { .. }
        | RecordError::WrongKind { .. }
        | RecordError::UnknownField { .. }
        | RecordError::MissingField { .. }
        | RecordError::InvalidField { .. }
        | RecordError::NonCanonical { .. }
        | RecordError::RetractionByOtherKey(_)
        | RecordError::InvalidSequence(_)
        | RecordError::InvalidEntryList(_)
        | RecordError::ParentInvalid { .. } => ErrorCode::InvalidSignedObject,
        _ => ErrorCode::InvalidArgument,
    }
}

/// An error and its causes on one line, without repeating a cause that the text before
/// it already quotes: what the command line prints after `error: `.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = next.source();
    }
    line
}
