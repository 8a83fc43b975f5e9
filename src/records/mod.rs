//! The signed record layer: resource records, licences, collections and retractions.
//!
//! Wire formats are described in docs/PROTOCOL.md; the licence rules in docs/LICENSES.md.

pub mod book;
pub mod codec;
pub mod collection;
pub mod entries;
pub mod error;
pub mod licence;
pub mod provenance;
pub mod record;
pub mod trust;
pub mod validate;

pub use book::{FollowMode, FollowState, HeadStatus, RecordBook};
pub use collection::{CollectionId, Head, HeadDraft, Retraction};
pub use entries::Entry;
pub use error::{Kind, RecordError, Result};
pub use licence::{CcLicence, Licence, LicenceConflict, LicenceWarning};
pub use provenance::ProvenanceNode;
pub use record::{attribution, Author, BasedOn, Educational, Record, RecordDraft};
pub use trust::TrustedPublishers;
