//! `session export` and `session import` through a server: the archive is
//! made on the server (`POST .../export`), then downloaded here; an import
//! is uploaded as a multipart form (`POST /api/import`), streamed from the
//! file. Byte progress bars on a terminal, as on the direct path.

use std::path::Path;
use std::sync::Arc;

use blink_sdk::manager::ExportOptions;
use blink_sdk::types::OpenedSession;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::{Method, header};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api_client::{ApiClient, Upload, segment};
use crate::archive::bar;
use crate::backend::session_path;
use crate::output::{Context, Progress};

/// Make the archive on the server and download it to `dest`; its size.
pub async fn export(
    ctx: &Context,
    client: &ApiClient,
    name: &str,
    dest: &Path,
    options: ExportOptions,
) -> anyhow::Result<u64> {
    #[derive(Deserialize)]
    struct Exported {
        filename: String,
        size_bytes: u64,
    }
    let path = format!(
        "{}?image={}&snapshots={}",
        session_path(name, "/export"),
        options.include_image,
        options.include_snapshots
    );
    let progress = Progress::start(ctx, &format!("exporting {name} on the server"));
    let exported = client
        .call::<Exported>(Method::POST, &path, None::<&()>)
        .await;
    progress.finish();
    let exported = exported?;
    let bar = bar(
        ctx,
        &format!("downloading {name}"),
        Some(exported.size_bytes),
    );
    let downloaded = download(client, &exported.filename, dest, bar.as_ref()).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let size = downloaded?;
    anyhow::ensure!(
        size == exported.size_bytes,
        "the download of {} stopped at {size} of {} bytes",
        exported.filename,
        exported.size_bytes
    );
    Ok(size)
}

async fn download(
    client: &ApiClient,
    filename: &str,
    dest: &Path,
    bar: Option<&indicatif::ProgressBar>,
) -> anyhow::Result<u64> {
    let request = client
        .request(Method::GET, &format!("/api/exports/{}", segment(filename)))
        .body(http_body_util::Empty::<Bytes>::new())?;
    let mut body = client.send_ok(request).await?.into_body();
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dest.display()))?;
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("the download broke off: {e}"))?;
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await?;
            size += data.len() as u64;
            if let Some(b) = bar {
                b.set_position(size);
            }
        }
    }
    file.flush().await?;
    Ok(size)
}

/// Upload `file` (`total` bytes) as a new session.
pub async fn import(
    client: &ApiClient,
    file: &Path,
    total: u64,
    name: Option<&str>,
    replace: bool,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> anyhow::Result<OpenedSession> {
    let boundary = format!("blink-{}", uuid::Uuid::new_v4().simple());
    let mut head = String::new();
    if let Some(name) = name {
        head.push_str(&field(&boundary, "name", name));
    }
    if replace {
        head.push_str(&field(&boundary, "replace", "true"));
    }
    head.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"archive\"; filename=\"archive.boxlite\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    ));
    let tail = format!("\r\n--{boundary}--\r\n");
    let length = head.len() as u64 + total + tail.len() as u64;
    let mut reader = tokio::fs::File::open(file)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let (mut sender, body) = Upload::new(4);
    let feed = tokio::spawn(async move {
        if sender.send_data(Bytes::from(head)).await.is_err() {
            return Ok(());
        }
        let mut sent = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        while sent < total {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                anyhow::bail!("the archive shrank while it was being sent");
            }
            let n = n.min(usize::try_from(total - sent).unwrap_or(usize::MAX));
            sent += n as u64;
            if sender
                .send_data(Bytes::copy_from_slice(&buf[..n]))
                .await
                .is_err()
            {
                // The server stopped reading: its answer says why.
                return Ok(());
            }
            progress(sent);
        }
        let _ = sender.send_data(Bytes::from(tail)).await;
        Ok(())
    });
    let request = client
        .request(Method::POST, "/api/import")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header(header::CONTENT_LENGTH, length)
        .body(body)?;
    let answer = client.send_ok(request).await;
    feed.abort();
    let bytes = answer?.into_body().collect().await?.to_bytes();
    Ok(serde_json::from_slice(&bytes)?)
}

fn field(boundary: &str, name: &str, value: &str) -> String {
    format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
}
