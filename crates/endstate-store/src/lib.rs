//! The Master: desired revisions, changes, inventory, instances, the timeline and API tokens,
//! behind the object-safe [`Store`] trait, with the embedded [`SqliteStore`] backend.
//!
//! TODO docs
mod error;
mod model;
mod sqlite;
mod store;
pub mod testing;

pub use error::StoreError;
pub use model::{
    ActualInstance, Change, ChangeFilter, ChangeUpdate, DEFAULT_PAGE_LIMIT, DesiredInstance, Event, EventQuery,
    HostRecord, InstanceFilter, InstanceRecord, InstanceTransition, MAX_PAGE_LIMIT, NewEvent, NewRevision, Page,
    PageRequest, Revision, RevisionMeta, TokenRecord,
};
pub use sqlite::{SCHEMA_VERSION, SqliteStore, WriterStats};
pub use store::Store;
