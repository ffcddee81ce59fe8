//! Importers that move metric history from other tools into stepstore.
//!
//! - [`tensorboard`]: TensorBoard event files (`events.out.tfevents.*`),
//!   one run per run directory, one key per scalar tag.

pub mod tensorboard;
