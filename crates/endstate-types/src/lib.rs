//! The domain vocabulary of endstate: typed names and ids, generations, statuses, labels and selectors.
//!
//! This crate does no IO and knows no runtime. Its value types derive serde only where they
//! cross a boundary as they are (names, ids and statuses appear verbatim in specs, the store and the API).

mod ids;
mod labels;
mod status;

pub use ids::{ChangeId, EventSeq, Generation, HostName, NameError, RevisionId, validate_name};
pub use labels::{Labels, Selector, SelectorTerm};
pub use status::{ChangeState, Status};
