//! Put, get, resolve siblings and delete through the SDK.
//!
//! Start a cluster first (`cargo run --release -- cluster up`), then:
//! `cargo run --example quickstart -- data/cluster.toml`

use std::time::Duration;

use ringkv::{Client, ClientConfig, KvError, RequestOptions};

#[tokio::main]
async fn main() -> Result<(), KvError> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "cluster.toml".into());
    let mut config = ClientConfig::from_file(path.as_ref())?;
    config.timeout = Duration::from_secs(2);
    let client = Client::connect(config).await?;

    client.put("user:42", "Ada").await?;
    let read = client.get("user:42").await?;
    println!("user:42 = {:?}", read.value().map(String::from_utf8_lossy));

    // Two writers that both start from the same read are concurrent: both versions are kept.
    let seen = read.context;
    client
        .put_with(
            "user:42",
            "Ada Lovelace",
            &RequestOptions::with_context(seen.clone()),
        )
        .await?;
    client
        .put_with("user:42", "Ada King", &RequestOptions::with_context(seen))
        .await?;
    let both = client.get("user:42").await?;
    println!(
        "siblings: {:?}",
        both.values
            .iter()
            .map(|v| String::from_utf8_lossy(v))
            .collect::<Vec<_>>()
    );

    // A write carrying the context of that read replaces exactly what it saw.
    let opts = RequestOptions {
        context: Some(both.context),
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    client
        .put_with("user:42", "Ada King, Countess of Lovelace", &opts)
        .await?;
    println!(
        "resolved: {:?}",
        client
            .get("user:42")
            .await?
            .value()
            .map(String::from_utf8_lossy)
    );

    // Errors are typed: oversize pairs are refused before anything is stored.
    match client.put("blob", vec![0u8; 20_000]).await {
        Err(KvError::PairTooLarge { size, limit }) => println!("refused: {size} bytes > {limit}"),
        other => println!("unexpected: {other:?}"),
    }

    client.delete("user:42").await?;
    println!(
        "after delete, found = {}",
        client.get("user:42").await?.found()
    );
    Ok(())
}
