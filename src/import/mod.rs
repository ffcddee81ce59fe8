//! Importers that move metric history from other tools into stepstore.
//!
//! - [`tensorboard`]: TensorBoard event files (`events.out.tfevents.*`),
//!   one run per run directory, one key per scalar tag.
//! - [`dvc`]: a dvc pipeline's lock file (`dvc.lock`), one finished run
//!   per stage with its deps and outs as lineage.

pub mod dvc;
pub mod tensorboard;
