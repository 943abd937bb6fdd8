//! Opening a JetStream key-value bucket, creating it when it is missing, in a way
//! Debian's nats-server 2.9 answers: the bucket's stream is made as the client's
//! `create_key_value` makes it, but without its account query, whose answer this client
//! cannot read from that server.

use async_nats::jetstream::{self, kv};

/// Opens bucket `bucket` (`description` and `replicas` are used when it is created):
/// one value per key, no history.
pub async fn open_or_create(
    jetstream: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    if let Ok(store) = jetstream.get_key_value(bucket).await {
        return Ok(store);
    }
    let stream = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: replicas,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    jetstream
        .create_stream(stream)
        .await
        .map_err(|e| format!("cannot create the bucket {bucket}: {e}"))?;
    jetstream
        .get_key_value(bucket)
        .await
        .map_err(|e| format!("cannot open the bucket {bucket}: {e}"))
}
