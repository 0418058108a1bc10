//! R3 buckets for tests, made the way services make them: with
//! [`runtime::js::ensure_kv`], which returns only once the bucket answers a
//! put from this connection, so a test's first put needs no retry. (For a
//! stream, call [`runtime::js::ensure_stream`] itself.)

use async_nats::jetstream::{self, kv};

/// Creates (or opens) KV bucket `bucket` with 3 replicas, usable from `js`'s
/// connection when it returns.
pub async fn r3_kv(js: &jetstream::Context, bucket: &str) -> anyhow::Result<kv::Store> {
    runtime::js::ensure_kv(
        js,
        kv::Config {
            bucket: bucket.to_owned(),
            num_replicas: 3,
            ..Default::default()
        },
    )
    .await
}
