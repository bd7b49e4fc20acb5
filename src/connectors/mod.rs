//! Sources and sinks.

pub mod alibaba;
pub mod file;
pub mod generator;
pub mod parquet;

use std::path::{Path, PathBuf};

/// Errors of sinks.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The Parquet writer failed.
    #[error("{path}: parquet: {source}")]
    Parquet {
        /// The file being written.
        path: PathBuf,
        /// The writer's error.
        source: ::parquet::errors::ParquetError,
    },
}

impl SinkError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        SinkError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn parquet(path: &Path, source: ::parquet::errors::ParquetError) -> Self {
        SinkError::Parquet {
            path: path.to_path_buf(),
            source,
        }
    }
}
