//! Policy: the operator's model, its compilation, and the live store.

pub(crate) mod audit;
pub mod compile;
pub mod etcd;
pub(crate) mod features;
pub mod model;
pub(crate) mod persist;
pub(crate) mod roles;
pub mod store;

pub use compile::{Client, ClientSchemas, Snapshot};
pub use features::{Feature, FeatureSet};
pub use store::PolicyStore;
