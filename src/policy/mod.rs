//! Policy: the operator's model, its compilation, and the live store.

pub mod audit;
pub mod compile;
pub mod features;
pub mod model;
pub mod persist;
pub mod roles;
pub mod store;

pub use compile::{Client, ClientSchemas, Snapshot};
pub use features::{Feature, FeatureSet};
pub use store::PolicyStore;
