//! The classes of failure every layer reports, so that the HTTP layers can
//! map any error to a status and an MLflow-style `error_code` in one place.

/// What kind of failure an error is, independent of the module it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or breaks a rule (400).
    InvalidParameter,
    /// The request body could not be parsed (400).
    MalformedRequest,
    /// A named experiment, run or tag does not exist (404).
    NotFound,
    /// The caller's token may not touch it (403).
    PermissionDenied,
    /// The entity exists already (409 natively, 400 in MLflow's API).
    AlreadyExists,
    /// A param was logged again with a different value (409 natively).
    ParamConflict,
    /// The request is too large (413).
    TooLarge,
    /// The server is over its buffer budget; retry later (503).
    Overloaded,
    /// The server cannot make the change durable now (a full disk, an I/O
    /// error); nothing was acknowledged, retry later (507).
    InsufficientStorage,
    /// Something failed on the server (500).
    Internal,
    /// A write sent to a read replica (405).
    ReadOnlyReplica,
}

/// Errors that know their [`ErrorKind`].
pub trait Classify {
    /// The class of this error.
    fn kind(&self) -> ErrorKind;
}
