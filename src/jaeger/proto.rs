//! The generated messages, clients and servers of Jaeger's remote-storage API v2
//! (`proto/jaeger`, built by build.rs).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Package `jaeger.storage.v2`.
pub mod storage_v2 {
    include!(concat!(env!("OUT_DIR"), "/jaeger.storage.v2.rs"));
}
