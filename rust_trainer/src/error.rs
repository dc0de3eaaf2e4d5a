//! Errors the caller must tell apart, and the exit code each one maps to.
//!
//! Everything else travels as `anyhow::Error` with context naming the file or flag; the binary
//! walks the chain for one of these to choose the exit code and the `error` event's `kind`.

use serde::Serialize;

/// A failure the process reports with its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    /// A flag or a combination of flags that cannot work.
    #[error("{0}")]
    Usage(String),
    /// A data file that is missing, truncated or malformed.
    #[error("{0}")]
    Data(String),
    /// A device that was asked for and is absent, or ran out of memory.
    #[error("{0}")]
    Device(String),
}

/// The `kind` of an `error` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Usage,
    Data,
    Device,
    Diverged,
    Internal,
}

impl ErrorKind {
    /// Finds the kind of an error by looking through its whole chain of causes.
    pub fn of(err: &anyhow::Error) -> Self {
        let found = err.chain().find_map(|cause| cause.downcast_ref::<TrainerError>());
        match found {
            Some(TrainerError::Usage(_)) => Self::Usage,
            Some(TrainerError::Data(_)) => Self::Data,
            Some(TrainerError::Device(_)) => Self::Device,
            None if is_out_of_memory(err) => Self::Device,
            None => Self::Internal,
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            Self::Usage => 2,
            Self::Data => 3,
            Self::Diverged => 4,
            Self::Device => 5,
            Self::Internal => 1,
        }
    }
}

/// libtorch reports an exhausted device as an ordinary error whose text names it.
pub fn is_out_of_memory(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let text = cause.to_string().to_lowercase();
        text.contains("out of memory")
            || text.contains("can't allocate memory")
            || text.contains("cudaerrormemoryallocation")
    })
}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    TrainerError::Usage(message.into()).into()
}

pub fn data(message: impl Into<String>) -> anyhow::Error {
    TrainerError::Data(message.into()).into()
}

pub fn device(message: impl Into<String>) -> anyhow::Error {
    TrainerError::Device(message.into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn kind_is_found_under_context() {
        let err = Err::<(), _>(data("bad magic"))
            .context("reading train-images-idx3-ubyte.gz")
            .unwrap_err();
        // Context added on top must not hide the data error underneath.
        assert_eq!(ErrorKind::of(&err), ErrorKind::Data);
        assert_eq!(ErrorKind::of(&err).exit_code(), 3);
    }

    #[test]
    fn out_of_memory_is_a_device_error() {
        let err = anyhow::anyhow!("CUDA out of memory. Tried to allocate 2.00 GiB");
        assert_eq!(ErrorKind::of(&err), ErrorKind::Device);
    }

    #[test]
    fn a_failed_cpu_allocation_is_a_device_error() {
        let err = anyhow::anyhow!(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"
        );
        assert_eq!(ErrorKind::of(&err).exit_code(), 5);
    }

    #[test]
    fn anything_else_is_internal() {
        let err = anyhow::anyhow!("shape mismatch");
        assert_eq!(ErrorKind::of(&err).exit_code(), 1);
    }
}
